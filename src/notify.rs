//! The systemd notify protocol: a datagram to $NOTIFY_SOCKET. Without the
//! variable (no systemd, or Type= other than notify) this does nothing.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};

use log::debug;

pub fn notify(state: &str) {
    let Some(path) = std::env::var_os("NOTIFY_SOCKET") else {
        return;
    };
    let path = path.to_string_lossy().into_owned();
    // A name starting with '@' is in the abstract namespace.
    let addr = match path.strip_prefix('@') {
        Some(name) => SocketAddr::from_abstract_name(name.as_bytes()),
        None => SocketAddr::from_pathname(&path),
    };
    let sent = addr.and_then(|addr| {
        let socket = UnixDatagram::unbound()?;
        socket.send_to_addr(state.as_bytes(), &addr)
    });
    if let Err(e) = sent {
        debug!("cannot notify {path}: {e}");
    }
}

/// Start-up is done: the configuration is loaded and the socket bound.
pub fn ready() {
    notify(&format!(
        "READY=1\nMAINPID={}\nSTATUS=running",
        std::process::id()
    ));
}
