//! Link flags for the plugin binary. A runtime starts it once per command, so its start-up is
//! part of every pod's ADD and DEL. Linked as a position-dependent executable, as the reference
//! CNI plugins are, the dynamic loader has no relative relocations to apply and no relocated
//! pages to copy: that was half the instructions of a `VERSION` call (1.11 M → 0.58 M, counted
//! with callgrind). Shared libraries, stack and heap stay randomised.

fn main() {
    // A static executable (musl, or glibc with `crt-static`) has no dynamic loader to spare: it is
    // linked as rustc chooses, static-pie (a -no-pie on top of that makes it crash at start).
    let features = std::env::var("CARGO_CFG_TARGET_FEATURE").unwrap_or_default();
    let static_crt = features.split(',').any(|f| f == "crt-static")
        || std::env::var("CARGO_CFG_TARGET_ENV").as_deref() == Ok("musl");
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") && !static_crt {
        println!("cargo:rustc-link-arg-bin=static-macvlan=-no-pie");
    }
}
