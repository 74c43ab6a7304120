//! Run the test DHIS server on 127.0.0.1 to try dhid by hand:
//!
//! ```text
//! cargo run --example testserver -- --port 58911 --pass 1000:secret \
//!     --qrc 2011:15362638...21 --scan 60
//! ```
//!
//! It prints dhisd-like log lines until it is killed (Ctrl-C, SIGTERM).

use std::process::ExitCode;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use dhid::testserver::{Config, HostAuth, SidPolicy, TestServer};
use num_bigint::BigUint;

const USAGE: &str = "usage: testserver [--port N] [--pass HOSTID:PASSWORD]... \
                     [--qrc HOSTID:N]... [--scan SECS] [--unique-sids]";

fn main() -> ExitCode {
    let config = match parse(std::env::args().skip(1)) {
        Ok(config) => config,
        Err(msg) => {
            eprintln!("testserver: {msg}\n{USAGE}");
            return ExitCode::from(2);
        }
    };

    let started = Instant::now();
    let sink = move |line: &str| println!("[{:10.3}] {line}", started.elapsed().as_secs_f64());
    let config = Config {
        log_sink: Some(Arc::new(sink)),
        ..config
    };
    let server = match TestServer::start(config) {
        Ok(server) => server,
        Err(e) => {
            eprintln!("testserver: cannot start: {e}");
            return ExitCode::FAILURE;
        }
    };
    println!("Datagram Server Started on {}", server.local_addr());

    // The server thread does the work; the default signal disposition
    // ends the process.
    loop {
        thread::sleep(Duration::from_secs(3600));
    }
}

fn parse(mut args: impl Iterator<Item = String>) -> Result<Config, String> {
    let mut config = Config::default();
    let mut port = 0;
    while let Some(flag) = args.next() {
        if flag == "--unique-sids" {
            config.sids = SidPolicy::Unique;
            continue;
        }
        if !["--port", "--scan", "--pass", "--qrc"].contains(&flag.as_str()) {
            return Err(format!("unknown option {flag}"));
        }

        let value = args.next().ok_or(format!("{flag} needs a value"))?;
        match flag.as_str() {
            "--port" => port = number(&flag, &value)?,
            "--scan" => config.scan_interval = Duration::from_secs(number(&flag, &value)?),
            "--pass" => {
                let (hostid, password) = host_spec(&value)?;
                config = config.host(hostid, HostAuth::Password(password.to_owned()));
            }
            "--qrc" => {
                let (hostid, n) = host_spec(&value)?;
                let n = BigUint::parse_bytes(n.as_bytes(), 10).ok_or("N must be decimal")?;
                config = config.host(hostid, HostAuth::Qrc { n });
            }
            _ => unreachable!("checked above"),
        }
    }
    config.bind.set_port(port);
    Ok(config)
}

fn host_spec(value: &str) -> Result<(u32, &str), String> {
    let (hostid, rest) = value.split_once(':').ok_or("expected HOSTID:VALUE")?;
    Ok((number("HOSTID", hostid)?, rest))
}

fn number<T: std::str::FromStr>(what: &str, value: &str) -> Result<T, String> {
    value
        .parse()
        .map_err(|_| format!("{what}: {value:?} is not a number"))
}
