//! Helpers for tests that run real `corral` processes on loopback.
//!
//! ```text
//!  corral_binary()  builds (once per test process, a no-op when fresh) target/<profile>/corral,
//!                   or takes CORRAL_BINARY
//!  Pki              a throwaway CA with certificates, made by `corral ca`
//!  CoreCluster      core members as child processes: kill, pause, wipe, restart
//!  Fleet            a core plus agents as child processes, and clients of their sockets
//!  checker          linearizability of key histories, fencing numbers that only grow
//!  SmallDisk        a tmpfs of a few MiB under a data directory, to fill it up
//!  docker           the Docker cluster of deploy/: kill, pause, partition, netem
//!  http, browser    a plain HTTP client with SSE, and headless chromium over DevTools
//!  etcd_clients     Debian's etcdctl and Python's etcd3, installed when missing
//!  dig              Debian's dig, asking an agent's DNS server
//!  wait_until       poll a condition with a deadline, never a bare sleep
//! ```

pub mod browser;
pub mod checker;
pub mod core_cluster;
pub mod dig;
pub mod disk;
pub mod docker;
pub mod etcd_clients;
pub mod fleet;
pub mod http;
pub mod pki;
pub mod process;

pub use core_cluster::{CoreCluster, CoreOptions};
pub use disk::SmallDisk;
pub use fleet::Fleet;
pub use pki::Pki;
pub use process::{
    ChildProcess, corral_binary, example_binary, free_tcp_port, free_udp_port, wait_until,
};
