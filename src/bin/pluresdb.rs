//! The `pluresdb` command-line program (native only): see `pluresdb --help`.

#[cfg(not(target_arch = "wasm32"))]
fn main() -> std::process::ExitCode {
    pluresdb::cli::main()
}

#[cfg(target_arch = "wasm32")]
fn main() {}
