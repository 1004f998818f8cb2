//! Link flags for the plugin binary. A runtime starts it once per command, so its start-up is
//! part of every pod's ADD and DEL. Linked as a position-dependent executable, as the reference
//! CNI plugins are, the dynamic loader has no relative relocations to apply and no relocated
//! pages to copy: that was half the instructions of a `VERSION` call (1.11 M → 0.58 M, counted
//! with callgrind). Shared libraries, stack and heap stay randomised.

fn main() {
    if std::env::var("CARGO_CFG_TARGET_OS").as_deref() == Ok("linux") {
        println!("cargo:rustc-link-arg-bin=static-macvlan=-no-pie");
    }
}
