//! Criterion benchmarks of the core: matrix products from the benchmark
//! configurations (with GFLOPS), dense forward and backward, the benchmark
//! CNN's convolutions (forward, weight gradient, weight + input gradient),
//! pooling and BatchNorm, transposed convolutions, softmax cross-entropy, each optimizer step, and
//! whole training epochs.
//!
//! `cargo bench -p ferrograd-core` (all), or `cargo bench -p ferrograd-core -- gemm`.
//! Set `FERROGRAD_NUM_THREADS` to fix the thread count.

use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use ferrograd::kernels::gemm::{gemm, gemm_ldb, pad_rows, padded_ld};
use ferrograd::layers::{numel, Backward, Buffers, Forward, Layer, Layout};
use ferrograd::layers::{
    BatchNorm2DSpec, Conv2DSpec, ConvTranspose2DSpec, DenseSpec, MaxPool2DSpec, ReLUSpec, RescalingSpec,
};
use ferrograd::loss::{loss_grad, RowStat};
use ferrograd::optim::{OptimConfig, Optimizer};
use ferrograd::rng::Rng;
use ferrograd::{
    threads, Data, EpochOptions, Features, Flow, Init, LayerSpec, Loss, Padding, Sequential, Target,
};
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
        specs.push(LayerSpec::Dense(DenseSpec {
            in_features: width,
            out_features: h,
            bias: true,
            init: Init::He,
        }));
        specs.push(LayerSpec::ReLU(ReLUSpec {}));
        width = h;
    }
    specs.push(LayerSpec::Dense(DenseSpec {
        in_features: width,
        out_features: 10,
        bias: true,
        init: Init::Xavier,
    }));
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
            LayerSpec::Dense(DenseSpec { in_features: fi, out_features: fo, bias: true, init: Init::He }),
            LayerSpec::ReLU(ReLUSpec {}),
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

/// One layer's buffers for a batch: input, output, gradients, scratch.
struct LayerRun {
    layer: Box<dyn Layer<f32>>,
    input: Vec<usize>,
    output: Vec<usize>,
    n: usize,
    params: Vec<f32>,
    grads: Vec<f32>,
    buffers: Vec<f32>,
    counts: Vec<i64>,
    x: Vec<f32>,
    y: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    scratch: Vec<f32>,
    layout: Layout,
}

impl LayerRun {
    fn new(spec: LayerSpec, input: &[usize], n: usize, layout: Layout) -> Self {
        let layer = spec.build::<f32>().unwrap();
        let output = layer.output_shape(input).unwrap();
        let np: usize = layer.params().iter().map(|p| p.numel()).sum();
        let nb: usize = layer
            .buffers()
            .iter()
            .filter(|b| b.kind == ferrograd::layers::BufferKind::Float)
            .map(|b| b.numel())
            .sum();
        let mut params = randn(np, 11);
        let mut rng = Rng::new(12);
        layer.init_params(&mut params, &mut rng);
        let mut buffers = vec![0.0; nb];
        let mut counts = vec![0; 1];
        layer.init_buffers(&mut buffers, &mut counts);
        let scratch = vec![0.0; layer.scratch_len(n, input, true)];
        LayerRun {
            x: randn(n * numel(input), 13),
            y: vec![0.0; n * numel(&output)],
            dy: randn(n * numel(&output), 14),
            dx: vec![0.0; n * numel(input)],
            grads: vec![0.0; np],
            layer,
            input: input.to_vec(),
            output,
            n,
            params,
            buffers,
            counts,
            scratch,
            layout,
        }
    }

    fn forward(&mut self) {
        self.layer.forward(Forward {
            params: &self.params,
            buffers: Buffers::Update { values: &mut self.buffers, counts: &mut self.counts },
            x: &self.x,
            y: &mut self.y,
            scratch: &mut self.scratch,
            n: self.n,
            in_shape: &self.input,
            out_shape: &self.output,
            in_layout: self.layout,
            out_layout: self.layout,
            training: true,
            key: 1,
        });
    }

    fn backward(&mut self, with_dx: bool) {
        self.layer.backward(Backward {
            params: &self.params,
            grads: &mut self.grads,
            accumulate: false,
            buffers: &self.buffers,
            x: &self.x,
            y: &self.y,
            dy: &mut self.dy,
            dx: if with_dx { Some(&mut self.dx) } else { None },
            scratch: &mut self.scratch,
            n: self.n,
            in_shape: &self.input,
            out_shape: &self.output,
            in_layout: self.layout,
            out_layout: self.layout,
            key: 1,
        });
    }
}

/// The benchmark CNN's layers at batch 64 (their GFLOPS as Gelem/s):
/// `forward`, `weight_grad` (backward without the input gradient, as for a
/// first layer), `weight_and_input_grad`; the input gradient's cost is the
/// difference. Then 2x2 max pooling and BatchNorm2D (training).
fn bench_cnn_layers(c: &mut Criterion) {
    let mut g = c.benchmark_group("cnn_layers");
    let n = 64;
    let conv = |cin, cout| {
        LayerSpec::Conv2D(Conv2DSpec {
            in_channels: cin,
            out_channels: cout,
            kernel_size: [5, 5],
            stride: [1, 1],
            padding: Padding::Same,
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        })
    };
    for (name, spec, input, flops) in [
        ("conv1_1x28x28_to_32", conv(1, 32), vec![1, 28, 28], 2 * 32 * 25 * 784),
        ("conv2_32x14x14_to_64", conv(32, 64), vec![32, 14, 14], 2 * 64 * 800 * 196),
    ] {
        let mut run = LayerRun::new(spec, &input, n, Layout::ChannelsLast);
        g.throughput(Throughput::Elements((flops * n) as u64));
        g.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| threads::install(|| run.forward()).unwrap())
        });
        run.forward();
        g.bench_function(BenchmarkId::new("weight_grad", name), |b| {
            b.iter(|| threads::install(|| run.backward(false)).unwrap())
        });
        g.throughput(Throughput::Elements((2 * flops * n) as u64));
        g.bench_function(BenchmarkId::new("weight_and_input_grad", name), |b| {
            b.iter(|| threads::install(|| run.backward(true)).unwrap())
        });
    }
    let pool = LayerSpec::MaxPool2D(MaxPool2DSpec { kernel_size: [2, 2], stride: [2, 2], padding: [0, 0] });
    let bn = LayerSpec::BatchNorm2D(BatchNorm2DSpec { num_features: 32, eps: 1e-5, momentum: Some(0.1) });
    for (name, spec, layout) in [
        ("maxpool2x2_channels_last", pool.clone(), Layout::ChannelsLast),
        ("maxpool2x2_planar", pool, Layout::Planar),
        ("batchnorm2d", bn, Layout::Planar),
    ] {
        let mut run = LayerRun::new(spec, &[32, 28, 28], n, layout);
        g.throughput(Throughput::Elements((n * 32 * 784) as u64));
        g.bench_function(BenchmarkId::new("forward", name), |b| {
            b.iter(|| threads::install(|| run.forward()).unwrap())
        });
        run.forward();
        g.bench_function(BenchmarkId::new("backward", name), |b| {
            b.iter(|| threads::install(|| run.backward(true)).unwrap())
        });
    }
    g.finish();
}

/// A U-Net decoder's upsampling at batch 64, `ConvTranspose2D(32, 16)` on
/// 14x14 inputs to 28x28 outputs (GFLOPS as Gelem/s): k=2 s=2, and k=3 s=2
/// p=1 op=1. `forward`, `backward` (weight and input gradient) and both
/// (`forward_backward`, what torch's `ConvTranspose2d` forward + backward
/// does; `benches/bench_conv_transpose.py` times that side), on
/// channels-last buffers (between convolutions) and planar ones.
fn bench_conv_transpose(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv_transpose");
    let n = 64;
    let spec = |k: usize, p: usize, op: usize| {
        LayerSpec::ConvTranspose2D(ConvTranspose2DSpec {
            in_channels: 32,
            out_channels: 16,
            kernel_size: [k, k],
            stride: [2, 2],
            padding: [p, p],
            output_padding: [op, op],
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        })
    };
    for (name, spec, k) in
        [("k2s2_32x14x14_to_16", spec(2, 0, 0), 2), ("k3s2p1op1_32x14x14_to_16", spec(3, 1, 1), 3)]
    {
        // Multiply-adds: every input position meets every kernel tap.
        let flops = 2 * 32 * 16 * k * k * 196;
        for (layout, lname) in [(Layout::ChannelsLast, "channels_last"), (Layout::Planar, "planar")] {
            let id = format!("{name}_{lname}");
            let mut run = LayerRun::new(spec.clone(), &[32, 14, 14], n, layout);
            assert_eq!(run.output, [16, 28, 28]);
            g.throughput(Throughput::Elements((flops * n) as u64));
            g.bench_function(BenchmarkId::new("forward", &id), |b| {
                b.iter(|| threads::install(|| run.forward()).unwrap())
            });
            run.forward();
            g.throughput(Throughput::Elements((2 * flops * n) as u64));
            g.bench_function(BenchmarkId::new("backward", &id), |b| {
                b.iter(|| threads::install(|| run.backward(true)).unwrap())
            });
            g.throughput(Throughput::Elements((3 * flops * n) as u64));
            g.bench_function(BenchmarkId::new("forward_backward", &id), |b| {
                b.iter(|| {
                    threads::install(|| {
                        run.forward();
                        run.backward(true)
                    })
                    .unwrap()
                })
            });
        }
    }
    g.finish();
}

/// The convolution algorithm, chosen by this measurement: the second CNN
/// convolution's forward pass at batch 64 as ferrograd runs it (direct,
/// register-tiled over channels-last data, no im2col) against im2col into a
/// `(n * 196) x 800` matrix followed by one matrix product through the gemm
/// crate (the im2col time included), both on the library's threads.
fn bench_conv_algorithms(c: &mut Criterion) {
    let mut g = c.benchmark_group("conv_algorithm");
    let n = 64;
    let spec = LayerSpec::Conv2D(Conv2DSpec {
        in_channels: 32,
        out_channels: 64,
        kernel_size: [5, 5],
        stride: [1, 1],
        padding: Padding::Same,
        dilation: [1, 1],
        bias: false,
        init: Init::He,
    });
    g.throughput(Throughput::Elements((2 * 64 * 800 * 196 * n) as u64));
    let mut direct = LayerRun::new(spec, &[32, 14, 14], n, Layout::ChannelsLast);
    g.bench_function("direct_tiles", |b| b.iter(|| threads::install(|| direct.forward()).unwrap()));
    // im2col on the channels-last input: column (kh, kw, ci) of row (n, oh, ow).
    let x = randn(n * 196 * 32, 15);
    let w = randn(800 * 64, 16); // (kh, kw, ci) x co
    let mut cols = vec![0.0f32; n * 196 * 800];
    let mut y = vec![0.0f32; n * 196 * 64];
    g.bench_function("im2col_gemm", |b| {
        b.iter(|| {
            threads::install(|| {
                use rayon::prelude::*;
                cols.par_chunks_mut(196 * 800).enumerate().for_each(|(s, cs)| {
                    let xs = &x[s * 196 * 32..(s + 1) * 196 * 32];
                    for (p, row) in cs.chunks_exact_mut(800).enumerate() {
                        let (oh, ow) = (p / 14, p % 14);
                        for kh in 0..5 {
                            for kw in 0..5 {
                                let (ih, iw) = (oh + kh, ow + kw);
                                let dst = &mut row[(kh * 5 + kw) * 32..(kh * 5 + kw + 1) * 32];
                                if (2..16).contains(&ih) && (2..16).contains(&iw) {
                                    let at = ((ih - 2) * 14 + iw - 2) * 32;
                                    dst.copy_from_slice(&xs[at..at + 32]);
                                } else {
                                    dst.fill(0.0);
                                }
                            }
                        }
                    }
                });
                gemm(false, false, n * 196, 64, 800, 1.0, &cols, &w, 0.0, &mut y);
            })
            .unwrap()
        })
    });
    g.finish();
}

fn bench_loss(c: &mut Criterion) {
    let mut g = c.benchmark_group("softmax_cross_entropy");
    let spec = Loss::CrossEntropy.into();
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
                        &spec,
                        &logits,
                        n,
                        10,
                        Target::Labels(&labels),
                        None,
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
    for (name, cfg) in configs.clone() {
        let mut params = randn(n, 8);
        let ranges = std::iter::once(0..n).collect();
        let mut opt = Optimizer::<f32>::new(cfg, ranges).unwrap();
        g.bench_function(name, |b| {
            b.iter(|| threads::install(|| opt.step(&mut params, &grads).unwrap()).unwrap())
        });
    }
    g.finish();
    // The small MLP's first weight (in cache) and the CNN's dense weight
    // (out of cache), plain and measured (the update `fit(diagnostics=True)`
    // runs).
    for (group, n) in [("optimizer_step_100k", 784 * 128), ("optimizer_step_800k", 3136 * 256)] {
        let mut g = c.benchmark_group(group);
        let grads = randn(n, 7);
        g.throughput(Throughput::Elements(n as u64));
        for (name, cfg) in configs.clone() {
            for measured in [false, true] {
                let mut params = randn(n, 8);
                #[allow(clippy::single_range_in_vec_init)] // one parameter tensor
                let ranges = vec![0..n];
                let mut opt = Optimizer::<f32>::new(cfg.clone(), ranges).unwrap();
                let mut buf = Vec::new();
                let label = format!("{name}{}", if measured { "_measured" } else { "" });
                g.bench_function(label, |b| {
                    b.iter(|| {
                        threads::install(|| {
                            if measured {
                                opt.step_part_measured(&mut params, &grads, 0..n, &mut buf).unwrap();
                            } else {
                                opt.step_part(&mut params, &grads, 0..n).unwrap();
                            }
                            opt.finish_step();
                        })
                        .unwrap()
                    })
                });
            }
        }
        g.finish();
    }
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
        let mut specs = vec![LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: 0.0 })];
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
        let data = Data::new(Features::U8(&x), samples, &[784], Target::Labels(&y));
        let opts = EpochOptions { check: false, ..EpochOptions::new(Loss::CrossEntropy, batch) };
        g.bench_function(name, |b| {
            b.iter(|| {
                threads::install(|| {
                    model.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).unwrap()
                })
                .unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(
    benches,
    bench_gemm,
    bench_dense,
    bench_cnn_layers,
    bench_conv_transpose,
    bench_conv_algorithms,
    bench_loss,
    bench_optim,
    bench_train
);
criterion_main!(benches);
