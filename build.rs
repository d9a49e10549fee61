// Records the target triple so `forkecho --version` can say which build a
// board is running (armv6, armv7 and aarch64 binaries look alike on disk).
fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=FORKECHO_TARGET={target}");
    println!("cargo:rerun-if-changed=build.rs");
}
