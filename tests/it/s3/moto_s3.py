"""A real S3 API for tests: moto's server on 127.0.0.1 with IAM authentication on, so
every request's SigV4 signature is recomputed from the secret and checked.

  moto_s3.py serve BUCKET
      prints one JSON line {"port", "writer": [id, secret], "reader": [id, secret]} and
      serves until stdin closes. "writer" may only s3:PutObject into BUCKET (what a
      control plane gets); "reader" may get and list.
  moto_s3.py get PORT ID SECRET BUCKET KEY OUT    download one object (signed)
  moto_s3.py list PORT ID SECRET BUCKET           print the bucket's keys, one a line
"""

import json
import sys

import boto3
import requests
from moto.server import ThreadedMotoServer

REGION = "us-east-1"


def client(service, port, key_id="testing", secret="testing"):
    return boto3.client(
        service,
        endpoint_url=f"http://127.0.0.1:{port}",
        region_name=REGION,
        aws_access_key_id=key_id,
        aws_secret_access_key=secret,
    )


def user(iam, name, actions, resources):
    iam.create_user(UserName=name)
    policy = {
        "Version": "2012-10-17",
        "Statement": [{"Effect": "Allow", "Action": actions, "Resource": resources}],
    }
    iam.put_user_policy(UserName=name, PolicyName=name, PolicyDocument=json.dumps(policy))
    k = iam.create_access_key(UserName=name)["AccessKey"]
    return [k["AccessKeyId"], k["SecretAccessKey"]]


def serve(bucket):
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    port = server._server.server_port
    # set-up runs before authentication is switched on
    iam = client("iam", port)
    writer = user(iam, "etcd-snapshot", ["s3:PutObject"], [f"arn:aws:s3:::{bucket}/*"])
    reader = user(
        iam,
        "reader",
        ["s3:GetObject", "s3:ListBucket"],
        [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"],
    )
    client("s3", port).create_bucket(Bucket=bucket)
    # from now on every request needs a known access key and a valid signature
    r = requests.post(f"http://127.0.0.1:{port}/moto-api/reset-auth", data=b"0", timeout=10)
    r.raise_for_status()
    print(json.dumps({"port": port, "writer": writer, "reader": reader}), flush=True)
    sys.stdin.read()
    server.stop()


def main():
    cmd = sys.argv[1]
    if cmd == "serve":
        serve(sys.argv[2])
    elif cmd == "get":
        port, key_id, secret, bucket, key, out = sys.argv[2:8]
        client("s3", port, key_id, secret).download_file(bucket, key, out)
    elif cmd == "list":
        port, key_id, secret, bucket = sys.argv[2:6]
        res = client("s3", port, key_id, secret).list_objects_v2(Bucket=bucket)
        for o in res.get("Contents", []):
            print(o["Key"])
    else:
        sys.exit(f"unknown command {cmd}")


if __name__ == "__main__":
    main()
