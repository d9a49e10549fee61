// Records the target triple so `forkecho --version` can say which build a
// board is running (armv6, armv7 and aarch64 binaries look alike on disk),
// and the QEMU runner that .cargo/config.toml names for that target, so the
// tests start the server binary under the same emulator they run under:
// .cargo/config.toml stays the one place that maps a target to its runner.
use std::io::BufRead;

fn main() {
    let target = std::env::var("TARGET").unwrap_or_else(|_| "unknown".into());
    println!("cargo:rustc-env=FORKECHO_TARGET={target}");
    println!(
        "cargo:rustc-env=FORKECHO_RUNNER_DEFAULT={}",
        runner(&target)
    );
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=.cargo/config.toml");
}

/// `runner = "..."` in the `[target.TARGET]` section, or "" (native).
fn runner(target: &str) -> String {
    let Ok(file) = std::fs::File::open(".cargo/config.toml") else {
        return String::new();
    };
    let section = format!("[target.{target}]");
    let mut inside = false;
    for line in std::io::BufReader::new(file).lines().map_while(Result::ok) {
        let line = line.trim();
        if line.starts_with('[') {
            inside = line == section;
        } else if let Some(value) = inside.then(|| line.strip_prefix("runner")).flatten() {
            return value
                .trim_start()
                .trim_start_matches('=')
                .trim()
                .trim_matches('"')
                .into();
        }
    }
    String::new()
}
