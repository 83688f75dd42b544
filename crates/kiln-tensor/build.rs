//! Sets `kiln_avx512` on x86-64 when the compiler has the AVX-512 intrinsics and target
//! features (stable since Rust 1.89): the `f32` GEMM kernel and the AVX-512 builds of hot loops
//! are compiled then. With an older compiler (the workspace supports 1.85) they are left out and
//! `f32` products go through the AVX2 kernel (`sgemm_avx2.rs`, any x86-64 compiler) or
//! matrixmultiply, as `f64` ones always do.

fn main() {
    println!("cargo::rustc-check-cfg=cfg(kiln_avx512)");
    println!("cargo::rerun-if-changed=build.rs");
    let x86_64 = std::env::var("CARGO_CFG_TARGET_ARCH").is_ok_and(|a| a == "x86_64");
    if x86_64 && autocfg::new().probe_rustc_version(1, 89) {
        println!("cargo::rustc-cfg=kiln_avx512");
    }
}
