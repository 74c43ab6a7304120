//! Calibration for scripts/bench: a program that does nothing but send one
//! ECHO_REQ and exit. Its time from spawn to that datagram is what process
//! creation alone costs on the machine, the floor under dhid's start-up.
//!
//!     bench_probe PORT HOSTID    # to 127.0.0.1:PORT

use std::net::{Ipv4Addr, UdpSocket};
use std::process::ExitCode;

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let port = args.next().and_then(|a| a.parse::<u16>().ok());
    let hostid = args.next().and_then(|a| a.parse::<u32>().ok());
    let (Some(port), Some(hostid)) = (port, hostid) else {
        eprintln!("usage: bench_probe PORT HOSTID");
        return ExitCode::from(2);
    };
    // ECHO_REQ: opcode, serial, version, rport, hostid (big-endian u32s).
    let mut datagram = [0u8; 20];
    for (i, word) in [0x511, 1, 55, 0, hostid].into_iter().enumerate() {
        datagram[4 * i..4 * i + 4].copy_from_slice(&u32::to_be_bytes(word));
    }
    let sent = UdpSocket::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|s| s.send_to(&datagram, (Ipv4Addr::LOCALHOST, port)));
    match sent {
        Ok(_) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("bench_probe: {e}");
            ExitCode::FAILURE
        }
    }
}
