//! The graph a model computes: its specification (inputs, named layers,
//! nodes in topological order, outputs), its checks, and the plan the
//! engine derives from it once: which layer each op runs (activations
//! fused into the layer before them where that layer's output has one
//! consumer), which values need a gradient, which gradient slot holds each
//! value's gradient during the backward pass (by liveness), and which
//! values may share a channels-last layout.
//!
//! Values: graph inputs are values `0..k`; node `j`'s output is value
//! `k + j`. After fusion the engine stores one value per op: input values
//! `0..k`, op `j`'s output `k + j` ("storage values").

use crate::error::{Error, Result};
use crate::layers::{LayerSpec, Layouts, MergeSpec};
use serde::{Deserialize, Deserializer, Serialize};

/// A graph input: its name and (when known) its per-sample shape.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphInput {
    pub name: String,
    #[serde(default)]
    pub shape: Option<Vec<usize>>,
}

/// What a graph layer is: a single-input layer or a merge.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum NodeSpec {
    Layer(LayerSpec),
    Merge(MergeSpec),
}

impl<'de> Deserialize<'de> for NodeSpec {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        let v = serde_json::Value::deserialize(d)?;
        let merge = v.get("type").and_then(|t| t.as_str()).is_some_and(|t| MergeSpec::TAGS.contains(&t));
        if merge {
            serde_json::from_value(v).map(NodeSpec::Merge).map_err(D::Error::custom)
        } else {
            serde_json::from_value(v).map(NodeSpec::Layer).map_err(D::Error::custom)
        }
    }
}

impl NodeSpec {
    /// The layer's type name, as in Python.
    pub fn display_name(&self) -> &'static str {
        match self {
            NodeSpec::Layer(s) => s.display_name(),
            NodeSpec::Merge(m) => m.display_name(),
        }
    }
}

/// A named layer; a layer used by several nodes shares its parameters.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphLayer {
    pub name: String,
    pub spec: NodeSpec,
}

/// One call of a layer: which layer, on which values.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphNode {
    pub layer: usize,
    pub inputs: Vec<usize>,
}

/// A model's graph, as Python sends it (JSON) and a saved model records it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct GraphSpec {
    pub inputs: Vec<GraphInput>,
    pub layers: Vec<GraphLayer>,
    /// In topological order: a node reads graph inputs and earlier nodes.
    pub nodes: Vec<GraphNode>,
    /// Value ids of the outputs (node outputs).
    pub outputs: Vec<usize>,
}

impl GraphSpec {
    /// Parses a graph's JSON (structure only; see [`GraphSpec::check`]).
    pub fn from_json(text: &str) -> Result<GraphSpec> {
        serde_json::from_str(text).map_err(|e| Error::value(format!("invalid graph JSON: {e}")))
    }

    /// The graph's JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The chain `specs[0] -> specs[1] -> ...` on one input, with the
    /// layers named by their index (`Sequential`'s `"0.weight"` names).
    pub fn chain(specs: Vec<LayerSpec>) -> GraphSpec {
        let n = specs.len();
        GraphSpec {
            inputs: vec![GraphInput { name: "input".into(), shape: None }],
            layers: specs
                .into_iter()
                .enumerate()
                .map(|(i, s)| GraphLayer { name: i.to_string(), spec: NodeSpec::Layer(s) })
                .collect(),
            nodes: (0..n).map(|i| GraphNode { layer: i, inputs: vec![i] }).collect(),
            outputs: vec![n],
        }
    }

    /// Whether this is a [`GraphSpec::chain`] (messages name its layers by index).
    pub fn is_chain(&self) -> bool {
        let n = self.layers.len();
        self.inputs.len() == 1
            && self.nodes.len() == n
            && self.outputs == [n]
            && self.layers.iter().enumerate().all(|(i, l)| l.name == i.to_string())
            && self.nodes.iter().enumerate().all(|(i, nd)| nd.layer == i && nd.inputs == [i])
            && self.layers.iter().all(|l| matches!(l.spec, NodeSpec::Layer(_)))
    }

    /// The layer specs of a chain, in order (`None` for other graphs).
    pub fn chain_specs(&self) -> Option<Vec<LayerSpec>> {
        if !self.is_chain() {
            return None;
        }
        self.layers
            .iter()
            .map(|l| match &l.spec {
                NodeSpec::Layer(s) => Some(s.clone()),
                NodeSpec::Merge(_) => None,
            })
            .collect()
    }

    /// The number of values (inputs and node outputs).
    pub fn num_values(&self) -> usize {
        self.inputs.len() + self.nodes.len()
    }

    /// A value's description for messages: the input or the layer whose
    /// node produces it.
    pub fn value_name(&self, v: usize) -> String {
        let k = self.inputs.len();
        match v.checked_sub(k) {
            None => format!("input {:?}", self.inputs[v].name),
            Some(j) => format!("layer {:?}", self.layers[self.nodes[j].layer].name),
        }
    }

    /// Checks the structure (not the shapes): names, indices, topological
    /// order, input counts, and that every input, layer and node leads to an
    /// output.
    pub fn check(&self) -> Result<()> {
        let k = self.inputs.len();
        if k == 0 {
            return Err(Error::value("a model needs at least one input"));
        }
        if self.nodes.is_empty() {
            return Err(Error::value("a model needs at least one layer"));
        }
        if self.outputs.is_empty() {
            return Err(Error::value("a model needs at least one output"));
        }
        let mut names = std::collections::HashSet::new();
        for name in self.inputs.iter().map(|i| &i.name).chain(self.layers.iter().map(|l| &l.name)) {
            if name.is_empty() {
                return Err(Error::value("layer and input names must not be empty"));
            }
            if !names.insert(name.as_str()) {
                return Err(Error::value(format!(
                    "the name {name:?} is used twice; layer and input names must be unique"
                )));
            }
        }
        let mut used = vec![false; self.layers.len()];
        for (j, node) in self.nodes.iter().enumerate() {
            let Some(layer) = self.layers.get(node.layer) else {
                return Err(Error::value(format!(
                    "node {j} calls layer {} of {}",
                    node.layer,
                    self.layers.len()
                )));
            };
            used[node.layer] = true;
            if let Some(&v) = node.inputs.iter().find(|&&v| v >= k + j) {
                return Err(Error::value(format!(
                    "node {j} (layer {:?}) reads value {v}, which is not computed before it",
                    layer.name
                )));
            }
            let count = node.inputs.len();
            let ok = match &layer.spec {
                NodeSpec::Layer(_) => count == 1,
                NodeSpec::Merge(MergeSpec::Subtract) => count == 2,
                NodeSpec::Merge(_) => count >= 2,
            };
            if !ok {
                let want = match &layer.spec {
                    NodeSpec::Layer(_) => "exactly 1",
                    NodeSpec::Merge(MergeSpec::Subtract) => "exactly 2",
                    NodeSpec::Merge(_) => "at least 2",
                };
                return Err(Error::value(format!(
                    "layer {:?} ({}) takes {want} inputs, got {count}",
                    layer.name,
                    layer.spec.display_name()
                )));
            }
        }
        if let Some(i) = used.iter().position(|u| !u) {
            return Err(Error::value(format!("layer {:?} is not called by any node", self.layers[i].name)));
        }
        let nv = self.num_values();
        let mut seen = vec![false; nv];
        for &o in &self.outputs {
            if o < k || o >= nv {
                return Err(Error::value(format!(
                    "output value {o} is not the output of a layer (values {k}..{nv})"
                )));
            }
            if std::mem::replace(&mut seen[o], true) {
                return Err(Error::value(format!("{} is listed twice as an output", self.value_name(o))));
            }
        }
        // Every value must lead to an output.
        let mut live = seen;
        for j in (0..self.nodes.len()).rev() {
            if live[k + j] {
                for &v in &self.nodes[j].inputs {
                    live[v] = true;
                }
            }
        }
        if let Some(v) = live.iter().position(|l| !l) {
            let what = self.value_name(v);
            return Err(Error::value(if v < k {
                format!("{what} is not used by any output")
            } else {
                format!("the output of {what} (node {}) does not lead to any output", v - k)
            }));
        }
        Ok(())
    }
}

/// What the engine derives from the graph once (no shapes needed).
#[derive(Clone, Debug, Default)]
pub(crate) struct Plan {
    /// Storage value of each graph value (a fused activation's output is
    /// its layer's).
    pub(crate) value: Vec<usize>,
    /// Per storage value: the ops reading it (an op once per read).
    pub(crate) consumers: Vec<Vec<usize>>,
    /// Per storage value: whether its gradient is needed (some op at or
    /// above it, towards the inputs, has parameters).
    pub(crate) needs_grad: Vec<bool>,
    /// Per storage value: its gradient slot (`NONE` if it needs none).
    pub(crate) slot: Vec<usize>,
    pub(crate) slots: usize,
    /// Per op and input: whether the input's gradient is added to what its
    /// slot holds (an earlier writer in the backward pass) or overwrites it.
    pub(crate) accumulate_dx: Vec<Vec<bool>>,
    /// Per op: whether another op of the same layer wrote its parameter
    /// gradients earlier in the backward pass (so this one adds to them).
    pub(crate) shared_grad: Vec<bool>,
    /// Per op: its layer's last gradient (the earliest op of the layer in
    /// forward order): the update runs after it.
    pub(crate) last_grad: Vec<bool>,
    /// Per storage value: its layout component (values joined through
    /// layout-preserving layers and elementwise merges).
    pub(crate) component: Vec<usize>,
}

/// No slot.
pub(crate) const NONE: usize = usize::MAX;

/// How the plan sees one op.
pub(crate) struct OpView<'a> {
    pub(crate) inputs: &'a [usize],
    pub(crate) layer: usize,
    pub(crate) has_params: bool,
    /// `Some(layouts)` for a single-input layer, `None` for a merge.
    pub(crate) layouts: Option<Layouts>,
    pub(crate) elementwise_merge: bool,
}

impl Plan {
    /// The plan for ops over `k` inputs; `outputs` are storage values.
    pub(crate) fn new(k: usize, ops: &[OpView<'_>], outputs: &[usize], value: Vec<usize>) -> Plan {
        let nv = k + ops.len();
        let mut consumers = vec![Vec::new(); nv];
        let mut needs_grad = vec![false; nv];
        for (j, op) in ops.iter().enumerate() {
            for &v in op.inputs {
                consumers[v].push(j);
            }
            needs_grad[k + j] = op.has_params || op.inputs.iter().any(|&v| needs_grad[v]);
        }
        // Gradient slots by liveness, backward: a value's slot is taken by
        // its first writer and freed after its producer's backward.
        let mut slot = vec![NONE; nv];
        let mut free: Vec<usize> = Vec::new();
        let mut slots = 0;
        let mut take = |free: &mut Vec<usize>| {
            free.pop().unwrap_or_else(|| {
                slots += 1;
                slots - 1
            })
        };
        for &o in outputs {
            if needs_grad[o] && slot[o] == NONE {
                slot[o] = take(&mut free);
            }
        }
        let mut accumulate_dx = vec![Vec::new(); ops.len()];
        for (j, op) in ops.iter().enumerate().rev() {
            if !needs_grad[k + j] {
                continue;
            }
            for &v in op.inputs {
                let acc = needs_grad[v] && slot[v] != NONE;
                if needs_grad[v] && slot[v] == NONE {
                    slot[v] = take(&mut free);
                }
                accumulate_dx[j].push(acc);
            }
            free.push(slot[k + j]);
        }
        let mut shared_grad = vec![false; ops.len()];
        let mut last_grad = vec![false; ops.len()];
        let mut seen_layer = std::collections::HashSet::new();
        for (j, op) in ops.iter().enumerate().rev() {
            shared_grad[j] = !seen_layer.insert(op.layer);
        }
        seen_layer.clear();
        for (j, op) in ops.iter().enumerate() {
            last_grad[j] = seen_layer.insert(op.layer);
        }
        // Layout components: union through Preserve layers and elementwise merges.
        let mut parent: Vec<usize> = (0..nv).collect();
        fn find(p: &mut [usize], mut v: usize) -> usize {
            while p[v] != v {
                p[v] = p[p[v]];
                v = p[v];
            }
            v
        }
        for (j, op) in ops.iter().enumerate() {
            if op.layouts == Some(Layouts::Preserve) || op.elementwise_merge {
                for &v in op.inputs {
                    let (a, b) = (find(&mut parent, v), find(&mut parent, k + j));
                    parent[a] = b;
                }
            }
        }
        let component = (0..nv).map(|v| find(&mut parent, v)).collect();
        Plan { value, consumers, needs_grad, slot, slots, accumulate_dx, shared_grad, last_grad, component }
    }
}

/// The layout of every storage value: a component is channels-last iff its
/// samples have a rank above 1, every op producing into it from outside is
/// a `Convert` layer,
/// every op reading it from outside reads channels-last (`Convert` or
/// `Flatten`), and no value in it is a graph output.
pub(crate) fn plan_layouts(
    k: usize,
    ops: &[OpView<'_>],
    plan: &Plan,
    shapes: &[Vec<usize>],
    outputs: &[usize],
) -> Vec<crate::layers::Layout> {
    use crate::layers::Layout;
    let nv = k + ops.len();
    let mut ok = vec![true; nv];
    let comp = &plan.component;
    for v in 0..k {
        ok[comp[v]] = false;
    }
    for &o in outputs {
        ok[comp[o]] = false;
    }
    for v in 0..nv {
        if shapes[v].len() <= 1 {
            ok[comp[v]] = false;
        }
    }
    for (j, op) in ops.iter().enumerate() {
        let inside = op.layouts == Some(Layouts::Preserve) || op.elementwise_merge;
        if inside {
            continue;
        }
        // A producer at the component's root.
        if op.layouts != Some(Layouts::Convert) {
            ok[comp[k + j]] = false;
        }
        // A consumer outside the component.
        if !matches!(op.layouts, Some(Layouts::Convert | Layouts::Flatten)) {
            for &v in op.inputs {
                ok[comp[v]] = false;
            }
        }
    }
    (0..nv).map(|v| if ok[comp[v]] { Layout::ChannelsLast } else { Layout::Planar }).collect()
}
