//! `corral`: every role (core member, agent, local dev cluster) and the command-line client.

use clap::Parser;

/// Every role allocates per packet, per request and per log entry; glibc's allocator spent
/// about a tenth of a loaded member's CPU on it, mimalloc a small part of that. Built
/// without transparent huge pages (`no_thp`): with them an idle agent held 63 MiB
/// resident instead of 42.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

// mimalloc's own entry point, in the library the allocator above links.
#[allow(unsafe_code)]
unsafe extern "C" {
    fn mi_thread_init();
    fn mi_collect(force: bool);
}

/// How often the allocator is asked to hand freed memory back.
const COLLECT_INTERVAL: std::time::Duration = std::time::Duration::from_secs(1);

/// mimalloc hands memory freed in bulk (a snapshot sent or installed, the replica saved,
/// a burst of writes) back to the system only a while after the free, and only when it
/// is next called: a process that goes quiet after a burst kept the burst's memory (an
/// agent that had followed 128,000 writes held 182 MiB instead of 116). A thread of
/// its own asks it once a second, which costs a few microseconds. The thread registers
/// with mimalloc first: a thread that never allocated has no heap of its own, and
/// mimalloc ignores its calls (an agent that had sent a 36 MB snapshot to a joining peer
/// kept 147 MiB resident instead of 71).
fn collect_freed_memory() {
    let _ = std::thread::Builder::new().name("memory".into()).spawn(|| {
        // SAFETY: mi_thread_init takes nothing and sets up this thread's own heap.
        #[allow(unsafe_code)]
        unsafe {
            mi_thread_init()
        };
        loop {
            std::thread::sleep(COLLECT_INTERVAL);
            // SAFETY: mi_collect takes no pointers; it only walks mimalloc's own free
            // lists and hands expired free pages back to the system.
            #[allow(unsafe_code)]
            unsafe {
                mi_collect(false)
            };
        }
    });
}

fn main() -> std::process::ExitCode {
    collect_freed_memory();
    let args = match corral_cli::config_file::expand(std::env::args_os().collect()) {
        Ok(args) => args,
        Err(error) => {
            eprintln!("error: {error}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let cli = corral_cli::Cli::parse_from(args);
    corral_cli::run(cli)
}
