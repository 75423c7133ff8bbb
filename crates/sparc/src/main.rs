//! The `sparc` command: parses the command line and hands over to [`sparc::cli`].

fn main() -> std::process::ExitCode {
    sparc::cli::main()
}
