//! Criterion benches of the kernels: GEMM, convolution and elementwise ops, each at 1 and 2
//! threads. The `threshold` groups sweep sizes around the parallel thresholds of
//! `kiln_tensor::parallel`, which were chosen from them.
//!
//! `cargo bench -p kiln-tensor --bench kernels -- threshold`

// criterion_group! defines a public function it cannot document
#![allow(missing_docs)]

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use kiln_tensor::kernels::conv::Conv2dParams;
use kiln_tensor::{set_num_threads, Float, Rng, Tensor};

fn gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    let mut rng = Rng::new(0);
    for n in [64usize, 256, 1024] {
        let a: Tensor = Tensor::randn(&[n, n], &mut rng);
        let b: Tensor = Tensor::randn(&[n, n], &mut rng);
        g.throughput(Throughput::Elements((2 * n * n * n) as u64));
        for threads in [1, 2] {
            set_num_threads(threads);
            g.bench_with_input(BenchmarkId::new(format!("matmul/t{threads}"), n), &n, |bch, _| {
                bch.iter(|| a.matmul(&b))
            });
        }
        set_num_threads(1);
        let at = a.t();
        g.bench_with_input(BenchmarkId::new("matmul_transposed_lhs/t1", n), &n, |bch, _| bch.iter(|| at.matmul(&b)));
    }
    g.finish();
}

/// The single-threaded `f32` kernel of `Float::gemm_raw` on the shapes of kiln's products:
/// squares, a 3x3 convolution's im2col products (forward, input and weight gradients), a Linear
/// 9216 -> 128 (`x·Wᵀ`) at batch 64 and 1. Run with `KILN_SGEMM=matrixmultiply` to compare
/// with matrixmultiply (see kernels/sgemm_avx2.rs).
fn sgemm_kernel(c: &mut Criterion) {
    let mut g = c.benchmark_group("sgemm_kernel");
    g.sample_size(10).warm_up_time(std::time::Duration::from_millis(300));
    g.measurement_time(std::time::Duration::from_secs(1));
    let mut rng = Rng::new(2);
    // (name, m, k, n, A transposed, B transposed, beta)
    let shapes = [
        ("square256", 256, 256, 256, false, false, 0.0),
        ("square512", 512, 512, 512, false, false, 0.0),
        ("square1024", 1024, 1024, 1024, false, false, 0.0),
        ("conv_fwd_64x288x576", 64, 288, 576, false, false, 0.0),
        ("conv_dx_288x64x576_ta", 288, 64, 576, true, false, 0.0),
        ("conv_dw_64x576x288_tb", 64, 576, 288, false, true, 1.0),
        ("conv_576x288x64_ta", 576, 288, 64, true, false, 0.0),
        ("linear_64x9216x128_tb", 64, 9216, 128, false, true, 0.0),
        ("gemv_1x9216x128_tb", 1, 9216, 128, false, true, 0.0),
    ];
    for (name, m, k, n, ta, tb, beta) in shapes {
        let a: Vec<f32> = (0..m * k).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let b: Vec<f32> = (0..k * n).map(|_| rng.next_f64() as f32 - 0.5).collect();
        let mut out = vec![0.0f32; m * n];
        let (rsa, csa) = if ta { (1, m as isize) } else { (k as isize, 1) };
        let (rsb, csb) = if tb { (1, k as isize) } else { (n as isize, 1) };
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        g.bench_function(name, |bch| {
            bch.iter(|| {
                // SAFETY: the buffers hold the matrices under these strides; out is distinct.
                unsafe {
                    f32::gemm_raw(
                        m,
                        k,
                        n,
                        1.0,
                        a.as_ptr(),
                        rsa,
                        csa,
                        b.as_ptr(),
                        rsb,
                        csb,
                        beta,
                        out.as_mut_ptr(),
                        n as isize,
                        1,
                    )
                }
            })
        });
    }
    g.finish();
}

fn conv(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv2d");
    g.sample_size(10);
    let mut rng = Rng::new(1);
    let x: Tensor = Tensor::randn(&[8, 64, 56, 56], &mut rng);
    let w: Tensor = Tensor::randn(&[64, 64, 3, 3], &mut rng);
    let bias: Tensor = Tensor::randn(&[64], &mut rng);
    let p = Conv2dParams { stride: [1, 1], padding: [1, 1], dilation: [1, 1], groups: 1 };
    g.throughput(Throughput::Elements(2 * 8 * 64 * 56 * 56 * 64 * 9));
    for threads in [1, 2] {
        set_num_threads(threads);
        g.bench_function(format!("64x64x3x3/batch8/t{threads}"), |b| b.iter(|| x.conv2d(&w, Some(&bias), &p)));
    }
    g.finish();
}

fn elementwise(c: &mut Criterion) {
    let mut g = c.benchmark_group("elementwise");
    let mut rng = Rng::new(2);
    let n = 1 << 20;
    let a: Tensor = Tensor::randn(&[1024, 1024], &mut rng);
    let b: Tensor = Tensor::randn(&[1024, 1024], &mut rng);
    let row: Tensor = Tensor::randn(&[1024], &mut rng);
    g.throughput(Throughput::Elements(n as u64));
    for threads in [1, 2] {
        set_num_threads(threads);
        g.bench_function(format!("add/t{threads}"), |bch| bch.iter(|| a.add(&b)));
        g.bench_function(format!("add_broadcast_row/t{threads}"), |bch| bch.iter(|| a.add(&row)));
        g.bench_function(format!("exp/t{threads}"), |bch| bch.iter(|| a.exp()));
        g.bench_function(format!("softmax/t{threads}"), |bch| bch.iter(|| a.softmax(-1)));
        g.bench_function(format!("sum_axis0/t{threads}"), |bch| bch.iter(|| a.sum(&[0], false)));
    }
    g.finish();
}

/// Sizes around the parallel thresholds: where 2 threads start to beat 1.
fn threshold(c: &mut Criterion) {
    let mut g = c.benchmark_group("threshold");
    let mut rng = Rng::new(3);
    for log2 in [12u32, 14, 15, 16, 17, 18, 19, 20] {
        let n = 1usize << log2;
        let a: Tensor = Tensor::randn(&[n], &mut rng);
        let b: Tensor = Tensor::randn(&[n], &mut rng);
        g.throughput(Throughput::Elements(n as u64));
        for threads in [1, 2] {
            set_num_threads(threads);
            g.bench_with_input(BenchmarkId::new(format!("add/t{threads}"), n), &n, |bch, _| {
                bch.iter(|| kiln_tensor::parallel::with_elementwise_threshold(0, || a.add(&b)))
            });
        }
    }
    for n in [32usize, 48, 64, 96, 128, 192, 256] {
        let a: Tensor = Tensor::randn(&[n, n], &mut rng);
        let b: Tensor = Tensor::randn(&[n, n], &mut rng);
        for threads in [1, 2] {
            set_num_threads(threads);
            g.bench_with_input(BenchmarkId::new(format!("gemm/t{threads}"), n * n * n), &n, |bch, _| {
                bch.iter(|| kiln_tensor::parallel::with_gemm_threshold(0, || a.matmul(&b)))
            });
        }
    }
    g.finish();
}

criterion_group!(benches, gemm, sgemm_kernel, conv, elementwise, threshold);
criterion_main!(benches);
