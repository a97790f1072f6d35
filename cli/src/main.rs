//! The `mend` binary: the built-in policies. A crate that adds its own builds its binary
//! the same way, calling `mend_cli::main_with` with its registry.

fn main() -> std::process::ExitCode {
    mend_cli::main()
}
