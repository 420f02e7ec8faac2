//! Minimal static HTTP/1.1 file server on 127.0.0.1 for ci/bench-fetch.sh: serves the
//! files of one directory, a thread per connection, keep-alive, bodies sent with
//! `std::io::copy` (sendfile on Linux) so the server is not what gets measured.
//!
//! Usage: `bench_server DIR` prints the port on stdout, then serves until killed.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};

fn main() -> std::io::Result<()> {
    let dir = PathBuf::from(std::env::args_os().nth(1).ok_or_else(|| std::io::Error::other("usage: DIR"))?);
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("{}", listener.local_addr()?.port());
    std::io::stdout().flush()?;
    for conn in listener.incoming().flatten() {
        let dir = dir.clone();
        std::thread::spawn(move || {
            let _ = serve(conn, &dir);
        });
    }
    Ok(())
}

fn serve(mut conn: TcpStream, dir: &Path) -> std::io::Result<()> {
    conn.set_nodelay(true)?;
    let mut reader = BufReader::new(conn.try_clone()?);
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let path = line.split_whitespace().nth(1).unwrap_or("/").to_string();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 {
                return Ok(());
            }
            if h.trim_end().is_empty() {
                break;
            }
        }
        // Only plain file names directly in `dir`.
        let name = path.trim_start_matches('/');
        let file = (!name.contains('/') && !name.starts_with('.'))
            .then(|| std::fs::File::open(dir.join(name)).ok())
            .flatten();
        let Some(mut file) = file else {
            conn.write_all(b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n")?;
            continue;
        };
        let len = file.metadata()?.len();
        write!(
            conn,
            "HTTP/1.1 200 OK\r\nContent-Length: {len}\r\nContent-Type: application/octet-stream\r\n\r\n"
        )?;
        std::io::copy(&mut file, &mut conn)?;
    }
}
