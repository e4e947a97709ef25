//! [`LayerSpec`]: a layer's configuration as the user gives it, with the
//! same names as the Python classes (and PyTorch's arguments). It is what
//! the Python side sends (as JSON) and what a saved model records; each
//! layer's constructor checks the values.

use super::{
    Activation, BatchNorm, Conv, ConvTranspose, Dense, Dropout, Flatten, GlobalAvgPool, Identity, Init,
    Layer, Pool, PoolKind, Rescaling, Softmax, Upsample, UpsampleMode,
};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::Act;
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Convolution padding: `"same"` (output as large as the input, stride 1
/// only), `"valid"` (none), or explicit sizes per spatial dimension.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Padding<P> {
    Same,
    Valid,
    Explicit(P),
}

impl<P: Serialize> Serialize for Padding<P> {
    fn serialize<S: Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        match self {
            Padding::Same => s.serialize_str("same"),
            Padding::Valid => s.serialize_str("valid"),
            Padding::Explicit(p) => p.serialize(s),
        }
    }
}

impl<'de, P: serde::de::DeserializeOwned> Deserialize<'de> for Padding<P> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        use serde::de::Error as _;
        match serde_json::Value::deserialize(d)? {
            serde_json::Value::String(s) => match s.as_str() {
                "same" => Ok(Padding::Same),
                "valid" => Ok(Padding::Valid),
                other => Err(D::Error::custom(format!(
                    "unknown padding {other:?}; expected \"same\", \"valid\" or sizes"
                ))),
            },
            v => serde_json::from_value(v).map(Padding::Explicit).map_err(D::Error::custom),
        }
    }
}

/// Reads a float that may be sent as `"nan"`, `"inf"` or `"-inf"` (JSON has
/// no such numbers), so that the layer can refuse it with a clear message.
pub(crate) fn float<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<f64, D::Error> {
    use serde::de::Error as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Number(n) => n.as_f64().ok_or_else(|| D::Error::custom(format!("bad number {n}"))),
        serde_json::Value::String(s) => match s.as_str() {
            "nan" => Ok(f64::NAN),
            "inf" => Ok(f64::INFINITY),
            "-inf" => Ok(f64::NEG_INFINITY),
            other => Err(D::Error::custom(format!("expected a number, got {other:?}"))),
        },
        other => Err(D::Error::custom(format!("expected a number, got {other}"))),
    }
}

/// [`float`] for an optional list of values (`null` is `None`).
pub(crate) fn opt_floats<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<Vec<f64>>, D::Error> {
    use serde::de::IntoDeserializer as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        serde_json::Value::Array(items) => items
            .into_iter()
            .map(|v| float(v.into_deserializer()).map_err(serde::de::Error::custom))
            .collect::<std::result::Result<Vec<_>, D::Error>>()
            .map(Some),
        other => Err(serde::de::Error::custom(format!("expected a list of numbers, got {other}"))),
    }
}

/// [`float`] for an optional value (`null` is `None`).
fn opt_float<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    use serde::de::IntoDeserializer as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => float(v.into_deserializer()).map(Some).map_err(serde::de::Error::custom),
    }
}

/// A layer's configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type")]
pub enum LayerSpec {
    Dense {
        in_features: usize,
        out_features: usize,
        bias: bool,
        init: Init,
    },
    ReLU,
    LeakyReLU {
        #[serde(deserialize_with = "float")]
        negative_slope: f64,
    },
    Sigmoid,
    Tanh,
    GELU,
    Softmax,
    Dropout {
        #[serde(deserialize_with = "float")]
        p: f64,
    },
    Flatten,
    Rescaling {
        #[serde(deserialize_with = "float")]
        scale: f64,
        #[serde(deserialize_with = "float")]
        offset: f64,
    },
    /// `torch.nn.Conv2d` on `(C, H, W)`; weight `(out, in, kh, kw)`.
    Conv2D {
        in_channels: usize,
        out_channels: usize,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: Padding<[usize; 2]>,
        dilation: [usize; 2],
        bias: bool,
        init: Init,
    },
    /// `torch.nn.Conv1d` on `(C, L)`; weight `(out, in, k)`.
    Conv1D {
        in_channels: usize,
        out_channels: usize,
        kernel_size: usize,
        stride: usize,
        padding: Padding<usize>,
        dilation: usize,
        bias: bool,
        init: Init,
    },
    /// `torch.nn.ConvTranspose2d` on `(C, H, W)`; weight `(in, out, kh, kw)`.
    ConvTranspose2D {
        in_channels: usize,
        out_channels: usize,
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
        output_padding: [usize; 2],
        dilation: [usize; 2],
        bias: bool,
        init: Init,
    },
    /// `torch.nn.Upsample` on `(C, H, W)` by whole factors.
    Upsample2D {
        scale_factor: [usize; 2],
        mode: UpsampleMode,
    },
    /// `y = x` (`torch.nn.Identity`).
    Identity,
    MaxPool2D {
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    /// Average pooling counting the padding (torch's `count_include_pad=True`).
    AvgPool2D {
        kernel_size: [usize; 2],
        stride: [usize; 2],
        padding: [usize; 2],
    },
    MaxPool1D {
        kernel_size: usize,
        stride: usize,
        padding: usize,
    },
    AvgPool1D {
        kernel_size: usize,
        stride: usize,
        padding: usize,
    },
    /// Mean over `(H, W)`: `(C, H, W) -> (C)`.
    GlobalAvgPool2D,
    /// `torch.nn.BatchNorm1d` on `(C)` or `(C, L)`; `momentum: None` is a
    /// cumulative average.
    BatchNorm1D {
        num_features: usize,
        #[serde(deserialize_with = "float")]
        eps: f64,
        #[serde(deserialize_with = "opt_float")]
        momentum: Option<f64>,
    },
    /// `torch.nn.BatchNorm2d` on `(C, H, W)`.
    BatchNorm2D {
        num_features: usize,
        #[serde(deserialize_with = "float")]
        eps: f64,
        #[serde(deserialize_with = "opt_float")]
        momentum: Option<f64>,
    },
}

impl LayerSpec {
    /// Parses one layer's JSON (`{"type": "Conv2D", "in_channels": 1, ...}`),
    /// checking it names a known layer and that its values are valid.
    pub fn from_json(text: &str) -> Result<LayerSpec> {
        let v: serde_json::Value =
            serde_json::from_str(text).map_err(|e| Error::value(format!("invalid layer JSON: {e}")))?;
        Self::from_value(v)
    }

    /// [`LayerSpec::from_json`] from a parsed value.
    pub fn from_value(v: serde_json::Value) -> Result<LayerSpec> {
        let Some(obj) = v.as_object() else {
            return Err(Error::value(format!("a layer must be a JSON object, got {v}")));
        };
        let Some(kind) = obj.get("type").and_then(|t| t.as_str()).map(str::to_owned) else {
            return Err(Error::value("a layer needs a string \"type\""));
        };
        // Sizes are unsigned; say which one is negative (serde would not).
        // Paddings may be 0, every other size must be at least 1.
        for (key, val) in obj {
            let items = match val {
                serde_json::Value::Array(a) => a.iter().collect(),
                other => vec![other],
            };
            if let Some(n) = items.iter().find_map(|x| x.as_i64().filter(|&n| n < 0)) {
                let min = if key == "padding" || key == "output_padding" { 0 } else { 1 };
                return Err(Error::value(format!("{kind}: {key} must be >= {min}, got {n}")));
            }
        }
        let spec: LayerSpec = serde_json::from_value(v).map_err(|e| {
            let msg = e.to_string();
            if msg.starts_with(&format!("unknown variant `{kind}`")) {
                Error::value(format!("unknown layer type {kind:?}"))
            } else {
                Error::value(format!("{kind}: {msg}"))
            }
        })?;
        spec.validate()?;
        Ok(spec)
    }

    /// The configuration as JSON (what [`LayerSpec::from_json`] reads).
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_default()
    }

    /// The activation this spec is, if it is one.
    pub fn activation(&self) -> Option<Act> {
        match *self {
            LayerSpec::ReLU => Some(Act::Relu),
            LayerSpec::LeakyReLU { negative_slope } => Some(Act::LeakyRelu(negative_slope)),
            LayerSpec::Sigmoid => Some(Act::Sigmoid),
            LayerSpec::Tanh => Some(Act::Tanh),
            LayerSpec::GELU => Some(Act::Gelu),
            _ => None,
        }
    }

    /// Checks the configuration's values (by building the layer).
    pub fn validate(&self) -> Result<()> {
        self.build::<f32>().map(drop)
    }

    /// Builds the layer; the error names the layer and the bad value.
    pub fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>> {
        let name = self.display_name();
        let layer: Box<dyn Layer<T>> = match self {
            &LayerSpec::Dense { in_features, out_features, bias, init } => {
                Box::new(Dense::new(in_features, out_features, bias, init)?)
            }
            LayerSpec::Softmax => Box::new(Softmax),
            &LayerSpec::Dropout { p } => Box::new(Dropout::new(p)?),
            LayerSpec::Flatten => Box::new(Flatten),
            &LayerSpec::Rescaling { scale, offset } => Box::new(Rescaling::new(scale, offset)?),
            LayerSpec::Conv2D {
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                bias,
                init,
            } => {
                let pad = padding.clone();
                Box::new(Conv::new(
                    name,
                    *in_channels,
                    *out_channels,
                    *kernel_size,
                    *stride,
                    pad,
                    *dilation,
                    *bias,
                    *init,
                )?)
            }
            LayerSpec::Conv1D {
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                dilation,
                bias,
                init,
            } => {
                let pad = match padding {
                    Padding::Same => Padding::Same,
                    Padding::Valid => Padding::Valid,
                    Padding::Explicit(p) => Padding::Explicit([0, *p]),
                };
                Box::new(Conv::new(
                    name,
                    *in_channels,
                    *out_channels,
                    [1, *kernel_size],
                    [1, *stride],
                    pad,
                    [1, *dilation],
                    *bias,
                    *init,
                )?)
            }
            &LayerSpec::ConvTranspose2D {
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                output_padding,
                dilation,
                bias,
                init,
            } => Box::new(ConvTranspose::new(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding,
                output_padding,
                dilation,
                bias,
                init,
            )?),
            &LayerSpec::Upsample2D { scale_factor, mode } => Box::new(Upsample::new(scale_factor, mode)?),
            LayerSpec::Identity => Box::new(Identity),
            &LayerSpec::MaxPool2D { kernel_size, stride, padding } => {
                Box::new(Pool::new(name, PoolKind::Max, 2, kernel_size, stride, padding)?)
            }
            &LayerSpec::AvgPool2D { kernel_size, stride, padding } => {
                Box::new(Pool::new(name, PoolKind::Avg, 2, kernel_size, stride, padding)?)
            }
            &LayerSpec::MaxPool1D { kernel_size, stride, padding } => {
                Box::new(Pool::new(name, PoolKind::Max, 1, [1, kernel_size], [1, stride], [0, padding])?)
            }
            &LayerSpec::AvgPool1D { kernel_size, stride, padding } => {
                Box::new(Pool::new(name, PoolKind::Avg, 1, [1, kernel_size], [1, stride], [0, padding])?)
            }
            LayerSpec::GlobalAvgPool2D => Box::new(GlobalAvgPool),
            &LayerSpec::BatchNorm1D { num_features, eps, momentum } => {
                Box::new(BatchNorm::new(name, 1, num_features, eps, momentum)?)
            }
            &LayerSpec::BatchNorm2D { num_features, eps, momentum } => {
                Box::new(BatchNorm::new(name, 2, num_features, eps, momentum)?)
            }
            s => match s.activation() {
                Some(act) => Box::new(Activation::new(act, name)?),
                None => return Err(Error::value(format!("unknown layer {s:?}"))),
            },
        };
        Ok(layer)
    }

    /// The class name, as in the Python package.
    pub fn display_name(&self) -> &'static str {
        match self {
            LayerSpec::Dense { .. } => "Dense",
            LayerSpec::ReLU => "ReLU",
            LayerSpec::LeakyReLU { .. } => "LeakyReLU",
            LayerSpec::Sigmoid => "Sigmoid",
            LayerSpec::Tanh => "Tanh",
            LayerSpec::GELU => "GELU",
            LayerSpec::Softmax => "Softmax",
            LayerSpec::Dropout { .. } => "Dropout",
            LayerSpec::Flatten => "Flatten",
            LayerSpec::Rescaling { .. } => "Rescaling",
            LayerSpec::Conv2D { .. } => "Conv2D",
            LayerSpec::Conv1D { .. } => "Conv1D",
            LayerSpec::ConvTranspose2D { .. } => "ConvTranspose2D",
            LayerSpec::Upsample2D { .. } => "Upsample2D",
            LayerSpec::Identity => "Identity",
            LayerSpec::MaxPool2D { .. } => "MaxPool2D",
            LayerSpec::AvgPool2D { .. } => "AvgPool2D",
            LayerSpec::MaxPool1D { .. } => "MaxPool1D",
            LayerSpec::AvgPool1D { .. } => "AvgPool1D",
            LayerSpec::GlobalAvgPool2D => "GlobalAvgPool2D",
            LayerSpec::BatchNorm1D { .. } => "BatchNorm1D",
            LayerSpec::BatchNorm2D { .. } => "BatchNorm2D",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_round_trip_and_errors() {
        let spec = LayerSpec::Conv2D {
            in_channels: 1,
            out_channels: 8,
            kernel_size: [3, 3],
            stride: [1, 1],
            padding: Padding::Same,
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        };
        let text = spec.to_json();
        assert_eq!(LayerSpec::from_json(&text).unwrap(), spec);
        let dense =
            r#"{"type": "Dense", "in_features": 3, "out_features": 2, "bias": true, "init": "xavier"}"#;
        assert!(matches!(LayerSpec::from_json(dense).unwrap(), LayerSpec::Dense { init: Init::Xavier, .. }));
        let err = |t: &str| LayerSpec::from_json(t).unwrap_err().message;
        assert_eq!(err(r#"{"type": "Conv3D"}"#), "unknown layer type \"Conv3D\"");
        assert!(err(&text.replace("\"same\"", "\"sam\"")).contains("unknown padding \"sam\""));
        assert!(err(&text.replace("\"same\"", "[-1, 0]")).contains("padding must be >= 0, got -1"));
        assert!(err(&text.replace("\"same\"", "[1]")).starts_with("Conv2D:"));
        assert!(err(r#"{"type": "Dropout", "p": 1.5}"#).contains("p must be in [0, 1)"));
        assert!(err(r#"{"type": "Dropout", "p": "nan"}"#).contains("p must be in [0, 1), got NaN"));
        assert!(err(r#"{"type": "Rescaling", "scale": "-inf", "offset": 0}"#).contains("must be finite"));
        assert!(err("[1, 2]").contains("JSON object"));
        assert!(err("{").contains("invalid layer JSON"));
        let dense =
            LayerSpec::Dense { in_features: 3, out_features: 2, bias: true, init: Init::Xavier }.to_json();
        assert!(err(&dense.replace(":3", ":-3")).contains("Dense: in_features must be >= 1, got -3"));
        assert!(err(&dense.replace("\"xavier\"", "null")).starts_with("Dense: unknown init null"));
        let bn = r#"{"type": "BatchNorm2D", "num_features": 4, "eps": 1e-5, "momentum": null}"#;
        assert!(matches!(LayerSpec::from_json(bn).unwrap(), LayerSpec::BatchNorm2D { momentum: None, .. }));
        assert!(err(&bn.replace("null", "1.5")).contains("momentum must be in [0, 1]"));
        assert!(err(&bn.replace("1e-5", "0")).contains("eps must be a finite value > 0"));
        let pool = r#"{"type": "MaxPool2D", "kernel_size": [3, 3], "stride": [1, 1], "padding": [2, 1]}"#;
        assert!(err(pool).contains("padding must be at most half the kernel size"));
        let up = r#"{"type": "Upsample2D", "scale_factor": [2, 3], "mode": "nearest"}"#;
        let parsed = LayerSpec::from_json(up).unwrap();
        assert_eq!(parsed, LayerSpec::Upsample2D { scale_factor: [2, 3], mode: UpsampleMode::Nearest });
        assert_eq!(LayerSpec::from_json(&parsed.to_json()).unwrap(), parsed);
        assert!(err(&up.replace("nearest", "cubic"))
            .contains("Upsample2D: unknown mode \"cubic\"; expected \"nearest\" or \"bilinear\""));
        assert!(err(&up.replace("[2, 3]", "[2, 0]")).contains("scale_factor must be >= 1, got (2, 0)"));
        let ct = LayerSpec::ConvTranspose2D {
            in_channels: 4,
            out_channels: 2,
            kernel_size: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            output_padding: [1, 1],
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        };
        let text_ct = ct.to_json();
        assert_eq!(LayerSpec::from_json(&text_ct).unwrap(), ct);
        let bad_op = text_ct.replace("\"output_padding\":[1,1]", "\"output_padding\":[-1,1]");
        assert!(err(&bad_op).contains("ConvTranspose2D: output_padding must be >= 0, got -1"));
        let big_op = text_ct.replace("\"output_padding\":[1,1]", "\"output_padding\":[2,1]");
        assert!(err(&big_op).contains("output_padding must be smaller than either stride or dilation"));
        assert_eq!(LayerSpec::from_json(r#"{"type": "Identity"}"#).unwrap(), LayerSpec::Identity);
        let strided = text.replace("\"stride\":[1,1]", "\"stride\":[2,1]");
        assert!(err(&strided).contains("padding=\"same\" needs stride 1"));
    }
}
