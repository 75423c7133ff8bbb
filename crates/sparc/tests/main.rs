//! The tests of the `sparc` binary itself, one module per area, in one binary: real `sparc`
//! processes (`serve`, `gateway`, `worker`, the command line) started and killed by the tests,
//! through `support`.

mod support;

mod accounts;
mod crash_restart;
mod gateways;
mod scheduler;
mod service;
mod worker;
