//! Criterion benchmarks of the core: matrix products from the benchmark
//! configurations (with GFLOPS), dense forward and backward, softmax
//! cross-entropy, each optimizer step, and whole training epochs.
//!
//! `cargo bench -p ferrograd-core` (all), or `cargo bench -p ferrograd-core -- gemm`.
//! Set `FERROGRAD_NUM_THREADS` to fix the thread count.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrograd::kernels::gemm::{gemm, gemm_ldb, pad_rows, padded_ld};
use ferrograd::loss::{loss_grad, RowStat};
use ferrograd::optim::{OptimConfig, Optimizer};
use ferrograd::rng::Rng;
use ferrograd::{threads, Data, EpochOptions, Features, Init, LayerSpec, Loss, Sequential, Target};
use std::hint::black_box;

fn randn(n: usize, seed: u64) -> Vec<f32> {
    let mut r = Rng::new(seed);
    (0..n).map(|_| r.normal() as f32).collect()
}

/// (batch, in, out) of the layers in the benchmark configurations.
const SHAPES: &[(usize, usize, usize)] =
    &[(32, 784, 128), (32, 128, 10), (128, 784, 512), (128, 512, 512), (256, 784, 1024), (256, 1024, 1024)];

fn bench_gemm(c: &mut Criterion) {
    let mut g = c.benchmark_group("gemm");
    for &(m, k, n) in SHAPES {
        let x = randn(m * k, 1);
        let w = randn(n * k, 2);
        let dy = randn(m * n, 3);
        let mut y = vec![0.0f32; m * n];
        let mut dw = vec![0.0f32; n * k];
        let mut dx = vec![0.0f32; m * k];
        // Throughput in "elements" = FLOPs, so criterion prints GFLOP/s as Gelem/s.
        g.throughput(Throughput::Elements((2 * m * n * k) as u64));
        let id = format!("{m}x{k}x{n}");
        g.bench_function(BenchmarkId::new("forward_xWt", &id), |b| {
            b.iter(|| threads::install(|| gemm(false, true, m, n, k, 1.0, &x, &w, 0.0, &mut y)).unwrap())
        });
        // What Dense does when `in` is a multiple of 256 floats: the weight
        // copied into padded rows (see `padded_ld`), copy included.
        if let Some(ld) = padded_ld::<f32>(k) {
            let mut wp = vec![0.0f32; n * ld];
            g.bench_function(BenchmarkId::new("forward_xWt_padded", &id), |b| {
                b.iter(|| {
                    threads::install(|| {
                        pad_rows(&w, n, k, ld, &mut wp);
                        gemm_ldb(false, true, m, n, k, 1.0, &x, &wp, ld, 0.0, &mut y)
                    })
                    .unwrap()
                })
            });
        }
        g.bench_function(BenchmarkId::new("weight_grad_dYtX", &id), |b| {
            b.iter(|| threads::install(|| gemm(true, false, n, k, m, 1.0, &dy, &x, 0.0, &mut dw)).unwrap())
        });
        g.bench_function(BenchmarkId::new("input_grad_dYW", &id), |b| {
            b.iter(|| threads::install(|| gemm(false, false, m, k, n, 1.0, &dy, &w, 0.0, &mut dx)).unwrap())
        });
    }
    g.finish();
}

fn mlp(hidden: &[usize]) -> Vec<LayerSpec> {
    let mut specs = Vec::new();
    let mut width = 784;
    for &h in hidden {
        specs.push(LayerSpec::Dense { in_features: width, out_features: h, bias: true, init: Init::He });
        specs.push(LayerSpec::ReLU);
        width = h;
    }
    specs.push(LayerSpec::Dense { in_features: width, out_features: 10, bias: true, init: Init::Xavier });
    specs
}

fn train_flops(hidden: &[usize]) -> usize {
    let mut sizes = vec![784];
    sizes.extend_from_slice(hidden);
    sizes.push(10);
    sizes.windows(2).enumerate().map(|(i, w)| 4 * w[0] * w[1] + if i > 0 { 2 * w[0] * w[1] } else { 0 }).sum()
}

fn bench_dense(c: &mut Criterion) {
    let mut g = c.benchmark_group("dense");
    for &(batch, fi, fo) in &[(32usize, 784usize, 128usize), (256, 1024, 1024)] {
        let specs = vec![
            LayerSpec::Dense { in_features: fi, out_features: fo, bias: true, init: Init::He },
            LayerSpec::ReLU,
        ];
        let mut model = Sequential::<f32>::new(specs, 0).unwrap();
        let x = randn(batch * fi, 4);
        let dout = randn(batch * fo, 5);
        let id = format!("{batch}x{fi}x{fo}");
        g.throughput(Throughput::Elements((2 * batch * fi * fo) as u64));
        g.bench_function(BenchmarkId::new("forward_bias_relu", &id), |b| {
            b.iter(|| {
                threads::install(|| {
                    black_box(model.forward(&Features::F32(&x), batch, &[fi], true).unwrap());
                })
                .unwrap()
            })
        });
        g.throughput(Throughput::Elements((4 * batch * fi * fo) as u64));
        g.bench_function(BenchmarkId::new("backward_relu_bias_dW_dX", &id), |b| {
            b.iter(|| threads::install(|| model.backward(&dout, &[batch, fo]).unwrap()).unwrap())
        });
    }
    g.finish();
}

fn bench_loss(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax_cross_entropy");
    for &n in &[32usize, 256] {
        let logits = randn(n * 10, 6);
        let labels: Vec<i64> = (0..n as i64).map(|i| i % 10).collect();
        let mut grad = vec![0.0f32; n * 10];
        let mut stats = vec![RowStat::default(); n];
        g.throughput(Throughput::Elements(n as u64));
        g.bench_function(BenchmarkId::from_parameter(n), |b| {
            b.iter(|| {
                threads::install(|| {
                    loss_grad(
                        Loss::CrossEntropy,
                        &logits,
                        n,
                        10,
                        Target::Labels(&labels),
                        Some(&mut grad),
                        &mut stats,
                    )
                    .unwrap()
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

fn bench_optim(c: &mut Criterion) {
    let mut g = c.benchmark_group("optimizer_step");
    let n = 1024 * 1024 + 784 * 1024; // the large MLP's two big weight matrices
    let grads = randn(n, 7);
    let configs = [
        (
            "sgd_momentum",
            OptimConfig::Sgd { lr: 0.01, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 },
        ),
        ("adam", OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }),
        ("adamw", OptimConfig::AdamW { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.01 }),
        (
            "rmsprop",
            OptimConfig::RmsProp {
                lr: 1e-2,
                alpha: 0.99,
                eps: 1e-8,
                momentum: 0.0,
                weight_decay: 0.0,
                centered: false,
            },
        ),
    ];
    g.throughput(Throughput::Elements(n as u64));
    for (name, cfg) in configs {
        let mut params = randn(n, 8);
        let ranges = std::iter::once(0..n).collect();
        let mut opt = Optimizer::<f32>::new(cfg, ranges).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| threads::install(|| opt.step(&mut params, &grads).unwrap()).unwrap())
        });
    }
    g.finish();
}

fn bench_train(c: &mut Criterion) {
    let mut g = c.benchmark_group("train_epoch");
    g.sample_size(10);
    let samples = 6_000;
    let x: Vec<u8> = {
        let mut r = Rng::new(9);
        (0..samples * 784).map(|_| (r.next_u64() >> 56) as u8).collect()
    };
    let y: Vec<i64> = (0..samples as i64).map(|i| (i * 7) % 10).collect();
    for (name, hidden, batch, adam) in [
        ("784-128-10_b32_sgd", vec![128], 32usize, false),
        ("784-512-512-10_b128_adam", vec![512, 512], 128, true),
        ("784-1024-1024-10_b256_adam", vec![1024, 1024], 256, true),
    ] {
        let mut specs = vec![LayerSpec::Rescaling { scale: 1.0 / 255.0, offset: 0.0 }];
        specs.extend(mlp(&hidden));
        let mut model = Sequential::<f32>::new(specs, 0).unwrap();
        let ranges = model.entries().iter().map(|e| e.range.clone()).collect();
        let cfg = if adam {
            OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 }
        } else {
            OptimConfig::Sgd { lr: 0.01, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 }
        };
        let mut opt = Optimizer::new(cfg, ranges).unwrap();
        // Throughput in FLOPs: criterion's Gelem/s is GFLOPS; samples/s = that / flops per sample.
        g.throughput(Throughput::Elements((train_flops(&hidden) * samples) as u64));
        let data = Data { x: Features::U8(&x), n: samples, shape: &[784], y: Target::Labels(&y) };
        let opts = EpochOptions { check: false, ..EpochOptions::new(Loss::CrossEntropy, batch) };
        g.bench_function(name, |b| {
            b.iter(|| {
                threads::install(|| model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(())).unwrap())
                    .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, bench_gemm, bench_dense, bench_loss, bench_optim, bench_train);
criterion_main!(benches);
