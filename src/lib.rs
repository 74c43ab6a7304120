//! dhid: the DHIS R5 client daemon.
//!
//! The protocol core (`record`, `engine`) does no I/O: it takes events and
//! the current time and returns datagrams, deadlines and events. The daemon
//! (`daemon`) owns the socket, the clock, signals and hooks around it.

#![deny(unsafe_code)]

pub mod cli;
pub mod config;
pub mod daemon;
pub mod engine;
pub mod hooks;
pub mod logging;
pub mod memory;
pub mod notify;
pub mod pidfile;
pub mod qrc;
pub mod record;
pub mod resolver;
pub mod signals;
pub mod testserver;
pub mod wire;
