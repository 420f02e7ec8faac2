//! Shared test support. Each integration test file does `mod common;`.
#![allow(dead_code)]

pub mod fixture;
pub mod http;
pub mod registry;

/// The imgbuild binary under test.
pub fn bin() -> std::process::Command {
    let mut c = std::process::Command::new(env!("CARGO_BIN_EXE_imgbuild"));
    c.env_remove("IMGBUILD_CACHE_DIR").env_remove("IMGBUILD_MIRROR");
    c
}
