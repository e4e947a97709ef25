//! Graph models: gradients against finite differences (fan-out, residual
//! connections, a shared layer, concatenation on several axes,
//! multiplication, several inputs, several outputs with loss weights), a
//! chain graph against `Sequential`, and thread-count independence.

use super::workspace::Grad;
use super::*;
use crate::data::Features;
use crate::layers::{
    BatchNorm2DSpec, Conv2DSpec, FlattenSpec, GlobalAvgPool2DSpec, Layout, MaxPool2DSpec, MergeSpec,
    ReLUSpec, SigmoidSpec, TanhSpec,
};
use crate::loss::{Loss, Target};
use crate::optim::OptimConfig;
use crate::{Init, Padding};

/// A graph under construction: `input`, `layer` and `merge` return value ids.
#[derive(Default)]
struct G {
    spec: Option<GraphSpec>,
}

impl G {
    fn g(&mut self) -> &mut GraphSpec {
        self.spec.get_or_insert(GraphSpec { inputs: vec![], layers: vec![], nodes: vec![], outputs: vec![] })
    }
    fn input(&mut self, name: &str, shape: &[usize]) -> usize {
        let g = self.g();
        assert!(g.nodes.is_empty(), "inputs first");
        g.inputs.push(GraphInput { name: name.into(), shape: Some(shape.to_vec()) });
        g.inputs.len() - 1
    }
    /// A new layer called on `inputs`.
    fn call(&mut self, spec: NodeSpec, inputs: &[usize]) -> usize {
        let g = self.g();
        let name = format!("l{}", g.layers.len());
        g.layers.push(GraphLayer { name, spec });
        let layer = g.layers.len() - 1;
        self.again(layer, inputs)
    }
    /// Layer `layer` called again (shared weights).
    fn again(&mut self, layer: usize, inputs: &[usize]) -> usize {
        let g = self.g();
        g.nodes.push(GraphNode { layer, inputs: inputs.to_vec() });
        g.inputs.len() + g.nodes.len() - 1
    }
    fn layer(&mut self, spec: LayerSpec, x: usize) -> usize {
        self.call(NodeSpec::Layer(spec), &[x])
    }
    fn merge(&mut self, spec: MergeSpec, xs: &[usize]) -> usize {
        self.call(NodeSpec::Merge(spec), xs)
    }
    fn dense(&mut self, x: usize, i: usize, o: usize) -> usize {
        self.layer(
            LayerSpec::Dense(DenseSpec { in_features: i, out_features: o, bias: true, init: Init::Xavier }),
            x,
        )
    }
    fn build(mut self, outputs: &[usize]) -> GraphSpec {
        let mut g = self.spec.take().expect("graph");
        g.outputs = outputs.to_vec();
        g
    }
}

fn conv(i: usize, o: usize, k: usize, stride: usize) -> LayerSpec {
    LayerSpec::Conv2D(Conv2DSpec {
        in_channels: i,
        out_channels: o,
        kernel_size: [k, k],
        stride: [stride, stride],
        padding: Padding::Explicit([k / 2, k / 2]),
        dilation: [1, 1],
        bias: false,
        init: Init::He,
    })
}

fn bn(c: usize) -> LayerSpec {
    LayerSpec::BatchNorm2D(BatchNorm2DSpec { num_features: c, eps: 1e-5, momentum: Some(0.1) })
}

fn values(n: usize, seed: u64) -> Vec<f64> {
    let mut r = crate::rng::Rng::new(seed);
    (0..n).map(|_| (r.next_u64() >> 11) as f64 / (1u64 << 53) as f64 * 2.0 - 1.0).collect()
}

/// Checks every parameter's gradient of `graph` (float64) against finite
/// differences, with one MSE (or cross-entropy, when `labels`) loss per output.
fn check(name: &str, graph: GraphSpec, losses: Losses) {
    let mut m = Sequential::<f64>::from_graph(graph, 3, true).expect(name);
    let n = 6;
    let shapes: Vec<Vec<usize>> = m.graph().inputs.iter().map(|i| i.shape.clone().expect("shape")).collect();
    let outs = m.output_shapes(&shapes).expect("shapes");
    let xs: Vec<Vec<f64>> = shapes
        .iter()
        .enumerate()
        .map(|(i, s)| values(n * s.iter().product::<usize>(), 10 + i as u64))
        .collect();
    let labels: Vec<Vec<i64>> =
        outs.iter().map(|s| (0..n).map(|r| (r % s.iter().product::<usize>()) as i64).collect()).collect();
    let ys: Vec<Vec<f64>> = outs
        .iter()
        .enumerate()
        .map(|(k, s)| values(n * s.iter().product::<usize>(), 20 + k as u64))
        .collect();
    let targets: Vec<Target<'_, f64>> = (0..outs.len())
        .map(|k| match losses.spec(k).kind {
            Loss::CrossEntropy => Target::Labels(&labels[k]),
            _ => Target::Values(&ys[k]),
        })
        .collect();
    let more_x: Vec<(Features<'_>, &[usize])> =
        xs.iter().zip(&shapes).skip(1).map(|(x, s)| (Features::F64(x), s.as_slice())).collect();
    let data = Data {
        x: Features::F64(&xs[0]),
        n,
        shape: &shapes[0],
        y: targets[0],
        weights: None,
        more_x: &more_x,
        more_y: &targets[1..],
    };
    let report = m.gradcheck(data, &losses, 1e-6).expect("gradcheck");
    assert!(!report.is_empty());
    for r in &report {
        assert!(r.max_rel_error < 1e-5, "{name}: {} has relative error {}", r.name, r.max_rel_error);
    }
    // The analytic gradients are not all zero (the check is not vacuous).
    let mut t = Totals::default();
    m.load_whole(&data, &losses).expect("load");
    m.forward_loss(n, Pass::frozen(1), &losses, &data, false, Grad::Mean, &mut t).expect("loss");
    m.grads.fill(0.0);
    m.backward_loaded(n, Pass::frozen(1), true, |_, _, _| {});
    for e in m.entries() {
        assert!(m.grads()[e.range.clone()].iter().any(|&g| g != 0.0), "{name}: {} has no gradient", e.name);
    }
}

fn mse() -> Losses {
    Loss::Mse.into()
}

#[test]
fn residual_fan_out_gradients() {
    // d1 feeds both Tanh and the Add (fan-out); the Add is the skip connection.
    let mut g = G::default();
    let x = g.input("x", &[5]);
    let d1 = g.dense(x, 5, 4);
    let t = g.layer(LayerSpec::Tanh(TanhSpec {}), d1);
    let d2 = g.dense(t, 4, 4);
    let a = g.merge(MergeSpec::Add, &[d1, d2]);
    let r = g.layer(LayerSpec::Tanh(TanhSpec {}), a);
    let out = g.dense(r, 4, 3);
    check("residual", g.build(&[out]), mse());
}

#[test]
fn conv_residual_block_with_projection_gradients() {
    // A ResNet BasicBlock with a projection shortcut: channels-last inside.
    let mut g = G::default();
    let x = g.input("x", &[2, 6, 6]);
    let c0 = g.layer(conv(2, 3, 3, 1), x);
    let s = g.layer(LayerSpec::ReLU(ReLUSpec {}), c0);
    let c1 = g.layer(conv(3, 4, 3, 2), s);
    let b1 = g.layer(bn(4), c1);
    let r1 = g.layer(LayerSpec::ReLU(ReLUSpec {}), b1);
    let c2 = g.layer(conv(4, 4, 3, 1), r1);
    let b2 = g.layer(bn(4), c2);
    let p = g.layer(conv(3, 4, 1, 2), s);
    let pb = g.layer(bn(4), p);
    let a = g.merge(MergeSpec::Add, &[b2, pb]);
    let r = g.layer(LayerSpec::Tanh(TanhSpec {}), a);
    let gp = g.layer(LayerSpec::GlobalAvgPool2D(GlobalAvgPool2DSpec {}), r);
    let out = g.dense(gp, 4, 3);
    let graph = g.build(&[out]);
    // The layouts: the stem's output, read by two convolutions, is
    // channels-last; BatchNorm reads planar, so the Add's inputs are planar.
    let mut m = Sequential::<f64>::from_graph(graph.clone(), 1, true).expect("model");
    m.plan(&[&[2, 6, 6]], 2, false).expect("plan");
    assert_eq!(m.ws.layouts[0], Layout::Planar);
    assert_eq!(m.ws.layouts[m.plan.value[s]], Layout::ChannelsLast, "the stem");
    assert_eq!(m.ws.layouts[m.plan.value[a]], Layout::Planar, "the Add's output");
    assert_eq!(*m.ws.layouts.last().expect("out"), Layout::Planar);
    check("conv block", graph, Loss::CrossEntropy.into());
}

#[test]
fn shared_layer_gradients() {
    // One Dense applied twice: its gradients are summed over both calls.
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let h = g.dense(x, 4, 4);
    let t = g.layer(LayerSpec::Tanh(TanhSpec {}), h);
    let h2 = g.again(0, &[t]);
    let t2 = g.layer(LayerSpec::Sigmoid(SigmoidSpec {}), h2);
    let out = g.dense(t2, 4, 2);
    let graph = g.build(&[out]);
    let m = Sequential::<f64>::from_graph(graph.clone(), 1, true).expect("model");
    let names: Vec<&str> = m.entries().iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["l0.weight", "l0.bias", "l3.weight", "l3.bias"]);
    check("shared", graph, mse());
}

#[test]
fn concatenate_and_multiply_gradients() {
    let mut g = G::default();
    let x = g.input("x", &[2, 3]);
    let a = g.dense(x, 3, 3);
    let b = g.dense(x, 3, 2);
    let c = g.merge(MergeSpec::Concatenate { axis: -1 }, &[a, b]); // (2, 5)
    let d = g.dense(x, 3, 5);
    let e = g.merge(MergeSpec::Concatenate { axis: 1 }, &[c, d, c]); // (6, 5), c read twice
    let gate = g.layer(LayerSpec::Sigmoid(SigmoidSpec {}), e);
    let h = g.layer(LayerSpec::Tanh(TanhSpec {}), e);
    let m = g.merge(MergeSpec::Multiply, &[gate, h, e]);
    let s = g.merge(MergeSpec::Subtract, &[m, e]);
    let av = g.merge(MergeSpec::Average, &[s, m]);
    let f = g.layer(LayerSpec::Flatten(FlattenSpec {}), av);
    let out = g.dense(f, 30, 3);
    check("concat", g.build(&[out]), mse());
}

#[test]
fn two_inputs_two_outputs_gradients() {
    let mut g = G::default();
    let x1 = g.input("image", &[4]);
    let x2 = g.input("table", &[3]);
    let a = g.dense(x1, 4, 3);
    let b = g.dense(x2, 3, 3);
    let s = g.merge(MergeSpec::Add, &[a, b]);
    let r = g.layer(LayerSpec::Tanh(TanhSpec {}), s);
    let c = g.merge(MergeSpec::Concatenate { axis: 1 }, &[r, b]);
    let out1 = g.dense(c, 6, 4);
    let out2 = g.dense(r, 3, 2);
    // out1 is also read by another layer.
    let t = g.layer(LayerSpec::Tanh(TanhSpec {}), out1);
    let out3 = g.dense(t, 4, 2);
    let losses = Losses {
        specs: vec![Loss::CrossEntropy.into(), Loss::Mse.into(), Loss::Mse.into()],
        weights: vec![0.3, 2.0, 0.7],
    };
    check("two in, three out", g.build(&[out1, out2, out3]), losses);
}

/// A chain written as a graph (other names) trains bitwise like `Sequential`.
#[test]
fn chain_graph_trains_like_sequential() {
    let specs = vec![
        LayerSpec::Rescaling(RescalingSpec { scale: 1.0 / 255.0, offset: 0.0 }),
        conv(1, 4, 3, 1),
        LayerSpec::ReLU(ReLUSpec {}),
        LayerSpec::MaxPool2D(MaxPool2DSpec { kernel_size: [2, 2], stride: [2, 2], padding: [0, 0] }),
        conv(4, 4, 3, 1),
        LayerSpec::BatchNorm2D(BatchNorm2DSpec { num_features: 4, eps: 1e-5, momentum: Some(0.1) }),
        LayerSpec::ReLU(ReLUSpec {}),
        LayerSpec::Flatten(FlattenSpec {}),
        LayerSpec::Dense(DenseSpec { in_features: 64, out_features: 10, bias: true, init: Init::Xavier }),
    ];
    let mut g = G::default();
    let mut v = g.input("pixels", &[1, 8, 8]);
    for s in &specs {
        v = g.layer(s.clone(), v);
    }
    let graph = g.build(&[v]);
    assert!(!graph.is_chain());
    let n = 100;
    let x: Vec<u8> = values(n * 64, 4).iter().map(|v| ((v + 1.0) * 127.0) as u8).collect();
    let y: Vec<i64> = (0..n).map(|i| (x[i * 64 + 20] % 10) as i64).collect();
    let train = |mut m: Sequential<f32>| {
        assert_eq!(m.prefix, 1);
        let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
        let cfg = OptimConfig::Adam { lr: 1e-2, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let data = Data::new(Features::U8(&x), n, &[1, 8, 8], Target::Labels(&y));
        let opts = EpochOptions::new(Loss::CrossEntropy, 16);
        let mut losses = Vec::new();
        for _ in 0..2 {
            let t = m.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch");
            losses.push(t.mean());
        }
        let mut out = vec![0.0; n * 10];
        m.predict_into(&Features::U8(&x), n, &[1, 8, 8], 32, &mut out).expect("predict");
        (m.params().to_vec(), m.buffers().to_vec(), out, losses)
    };
    let seq = train(Sequential::new(specs, 7).expect("seq"));
    let graph = train(Sequential::from_graph(graph, 7, true).expect("graph"));
    assert!(seq.3[1] < seq.3[0], "it learns: {:?}", seq.3);
    assert_eq!(seq, graph);
}

/// A residual CNN trains to the same bits on 1, 2 and 3 threads.
#[test]
fn graph_training_independent_of_thread_count() {
    let mut g = G::default();
    let x = g.input("x", &[1, 12, 12]);
    let c0 = g.layer(conv(1, 8, 3, 1), x);
    let r0 = g.layer(LayerSpec::ReLU(ReLUSpec {}), c0);
    let c1 = g.layer(conv(8, 8, 3, 1), r0);
    let b1 = g.layer(bn(8), c1);
    let a = g.merge(MergeSpec::Add, &[b1, r0]);
    let r = g.layer(LayerSpec::ReLU(ReLUSpec {}), a);
    let p = g.layer(LayerSpec::GlobalAvgPool2D(GlobalAvgPool2DSpec {}), r);
    let out = g.dense(p, 8, 10);
    let graph = g.build(&[out]);
    let n = 200;
    let xs: Vec<f32> = values(n * 144, 5).iter().map(|&v| v as f32).collect();
    let y: Vec<i64> = (0..n).map(|i| i64::from(xs[i * 144 + 30] > 0.0) * 3).collect();
    let train = |threads: usize| {
        let mut m = Sequential::<f32>::from_graph(graph.clone(), 2, true).expect("model");
        let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
        let cfg = OptimConfig::Adam { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay: 0.0 };
        let mut opt = Optimizer::new(cfg, ranges).expect("optimizer");
        let pool = rayon::ThreadPoolBuilder::new().num_threads(threads).build().expect("pool");
        pool.install(|| {
            let data = Data::new(Features::F32(&xs), n, &[1, 12, 12], Target::Labels(&y));
            let opts = EpochOptions::new(Loss::CrossEntropy, 64);
            m.train_epoch(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue)).expect("epoch")
        });
        m.params().to_vec()
    };
    let one = train(1);
    assert_eq!(one, train(2));
    assert_eq!(one, train(3));
}

#[test]
fn bad_graphs_are_refused() {
    let err = |g: GraphSpec| Sequential::<f32>::from_graph(g, 0, true).err().expect("refused").message;
    // Merge shapes, naming the layers that feed it.
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let a = g.dense(x, 4, 3);
    let b = g.dense(x, 4, 2);
    let s = g.merge(MergeSpec::Add, &[a, b]);
    let e = err(g.build(&[s]));
    assert!(e.contains("layer \"l2\" (Add)") && e.contains("layer \"l0\" with shape [3]"), "{e}");
    assert!(e.contains("layer \"l1\" with shape [2]"), "{e}");
    // An unused input.
    let mut g = G::default();
    let x = g.input("x", &[4]);
    g.input("unused", &[4]);
    let a = g.dense(x, 4, 3);
    assert!(err(g.build(&[a])).contains("input \"unused\" is not used"));
    // A dead branch.
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let a = g.dense(x, 4, 3);
    g.dense(x, 4, 3);
    assert!(err(g.build(&[a])).contains("does not lead to any output"));
    // Duplicate names.
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let a = g.dense(x, 4, 3);
    let mut graph = g.build(&[a]);
    graph.layers[0].name = "x".into();
    assert!(err(graph).contains("\"x\" is used twice"));
    // An input as output, and a wrong input count for a layer.
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let a = g.dense(x, 4, 3);
    let mut graph = g.build(&[a]);
    graph.outputs = vec![0];
    assert!(err(graph).contains("not the output of a layer"));
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let a = g.merge(MergeSpec::Subtract, &[x, x, x]);
    assert!(err(g.build(&[a])).contains("takes exactly 2 inputs"));
}

/// The graph JSON round trip, with a merge and a layer told apart by type.
#[test]
fn graph_json() {
    let mut g = G::default();
    let x = g.input("x", &[4]);
    let a = g.dense(x, 4, 4);
    let s = g.merge(MergeSpec::Concatenate { axis: -1 }, &[a, x]);
    let graph = g.build(&[s]);
    let text = serde_json::to_string(&graph).expect("json");
    assert!(text.contains(r#""spec":{"type":"Concatenate","axis":-1}"#), "{text}");
    let back: GraphSpec = serde_json::from_str(&text).expect("parse");
    assert_eq!(back, graph);
}

/// Data-parallel split training of a graph with two inputs and two outputs
/// (class weights on one loss, loss weights) equals one process to
/// rounding: each output's loss divides by the whole batch's denominator.
#[test]
fn graph_split_training_matches_one_process() {
    use crate::model::{GradHook, Parallel};
    use std::sync::{Barrier, Mutex};
    let mut g = G::default();
    let x1 = g.input("a", &[4]);
    let x2 = g.input("b", &[3]);
    let a = g.dense(x1, 4, 3);
    let b = g.dense(x2, 3, 3);
    let s = g.merge(MergeSpec::Add, &[a, b]);
    let r = g.layer(LayerSpec::Tanh(TanhSpec {}), s);
    let out1 = g.dense(r, 3, 3);
    let out2 = g.dense(r, 3, 2);
    let graph = g.build(&[out1, out2]);
    let n = 21;
    let (xa, xb) = (values(n * 4, 11), values(n * 3, 12));
    let y1: Vec<i64> = (0..n).map(|i| (i % 3) as i64).collect();
    let y2 = values(n * 2, 13);
    let weighted = crate::loss::LossSpec { weight: Some(vec![0.5, 2.0, 1.0]), ..Loss::CrossEntropy.into() };
    let losses = Losses { specs: vec![weighted, Loss::Mse.into()], weights: vec![0.5, 2.0] };
    let run = |par: Option<Parallel>, hook: Option<GradHook<'_, f64>>| {
        let mut m = Sequential::<f64>::from_graph(graph.clone(), 7, true).expect("graph");
        let ranges = m.entries().iter().map(|e| e.range.clone()).collect();
        let cfg =
            OptimConfig::Sgd { lr: 0.1, momentum: 0.9, dampening: 0.0, nesterov: false, weight_decay: 0.0 };
        let mut opt = crate::optim::Optimizer::new(cfg, ranges).expect("optimizer");
        let more_x = [(Features::F64(&xb), &[3usize][..])];
        let more_y = [Target::Values(&y2[..])];
        let mut data = Data::new(Features::F64(&xa), n, &[4], Target::Labels(&y1));
        data.more_x = &more_x;
        data.more_y = &more_y;
        let mut opts = EpochOptions::new(losses.clone(), 8);
        opts.parallel = par;
        let mut hook = hook;
        for _ in 0..2 {
            let h = hook.as_mut().map(|h| &mut **h as GradHook<'_, f64>);
            m.train_epoch_reduced(data, &mut opt, &opts, &mut |_| Ok(Flow::Continue), h).expect("epoch");
        }
        m.params().to_vec()
    };
    let one = run(None, None);
    let ranks = 2;
    let parts: Mutex<Vec<Vec<f64>>> = Mutex::new(vec![Vec::new(); ranks]);
    let barrier = Barrier::new(ranks);
    let all: Vec<Vec<f64>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..ranks)
            .map(|rank| {
                let (parts, barrier, run) = (&parts, &barrier, &run);
                s.spawn(move || {
                    let mut hook = |g: &mut [f64]| {
                        parts.lock().expect("lock")[rank] = g.to_vec();
                        barrier.wait();
                        let p = parts.lock().expect("lock");
                        for (i, v) in g.iter_mut().enumerate() {
                            *v = p.iter().map(|part| part[i]).sum();
                        }
                        drop(p);
                        barrier.wait();
                        Ok(())
                    };
                    run(Some(Parallel::Split { rank, ranks }), Some(&mut hook))
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().expect("rank")).collect()
    });
    assert_eq!(all[0], all[1], "ranks differ");
    let scale = one.iter().fold(0.0f64, |a, v| a.max(v.abs()));
    let err = one.iter().zip(&all[0]).fold(0.0f64, |a, (u, v)| a.max((u - v).abs()));
    assert!(err <= 1e-12 * scale, "max error {err}");
    let fresh = Sequential::<f64>::from_graph(graph.clone(), 7, true).expect("graph");
    assert!(one != fresh.params(), "the weights moved");
}
