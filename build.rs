//! Links the unwinder statically (gcc's libgcc_eh) instead of loading the
//! shared libgcc_s.
//!
//! On glibc, Rust's standard library asks the linker for `-lgcc_s`, the
//! shared unwinder. dhid aborts on panic and loads no Rust library, so the
//! shared unwinder buys it nothing, and loading it costs about 0.12 ms of
//! every start on the machines of docs/BENCHMARKS.md: its constructor
//! probes the CPU with CPUID, which a virtual machine traps. C programs
//! built by gcc get the static unwinder the same way, and libc stays
//! shared (its security fixes still reach dhid).
//!
//! How: a linker script named `libgcc_s.so` in OUT_DIR, searched before the
//! system's directories (`-L` applies to every `-l` on the line), hands the
//! linker `-lgcc_eh`. Only dhid's own targets get it. A static build
//! (`crt-static`) links libgcc_eh anyway and is left alone. Set
//! DHID_SHARED_LIBGCC=1 for a toolchain without libgcc_eh.a.

use std::env;
use std::fs;
use std::path::PathBuf;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-env-changed=DHID_SHARED_LIBGCC");

    let target_is = |var: &str, value: &str| env::var(var).is_ok_and(|v| v == value);
    let static_build = env::var("CARGO_CFG_TARGET_FEATURE")
        .is_ok_and(|features| features.split(',').any(|f| f == "crt-static"));
    let opted_out = env::var_os("DHID_SHARED_LIBGCC").is_some_and(|v| v == "1");
    if !target_is("CARGO_CFG_TARGET_OS", "linux")
        || !target_is("CARGO_CFG_TARGET_ENV", "gnu")
        || static_build
        || opted_out
    {
        return;
    }

    let dir = PathBuf::from(env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    fs::write(dir.join("libgcc_s.so"), "INPUT(-lgcc_eh)\n").expect("OUT_DIR is writable");
    // A link argument, not a search path: cargo would hand a search path
    // on to every crate that depends on dhid (the fuzz targets, which load
    // libstdc++ and with it the shared libgcc_s), and to LD_LIBRARY_PATH.
    println!("cargo:rustc-link-arg=-L{}", dir.display());
}
