//! The `sparc` command: parses the command line and hands over to [`sparc::cli`].

/// mimalloc instead of the C library's allocator: request handling allocates and frees many
/// small buffers on several threads, where glibc's malloc spent a third of the service's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sparc::cli::main()
}
