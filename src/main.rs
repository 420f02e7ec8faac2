//! Thin binary: everything lives in the library so tests can drive it too.
#![deny(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout, clippy::print_stderr)]

fn main() -> std::process::ExitCode {
    imgbuild::cmd::main()
}
