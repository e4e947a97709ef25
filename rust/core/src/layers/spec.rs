//! The machinery of the layer registry: the [`LayerConfig`] trait each layer
//! file implements for its configuration, the `layer_registry!` macro that
//! turns the one list in `mod.rs` into [`LayerSpec`] (the enum, its JSON
//! tags, builder, names and argument lists), and the serde helpers configs
//! share ([`Padding`], floats that may arrive as `"nan"`).
//!
//! A [`LayerSpec`] is a layer's configuration as the user gives it, with the
//! same names as the Python classes (and PyTorch's arguments). It is what
//! the Python side sends (as JSON) and what a saved model records; each
//! layer's constructor checks the values.

use super::{BufferDecl, Layer, LayerSpec, ParamDecl};
use crate::error::{Error, Result};
use crate::float::Float;
use crate::kernels::activation::Act;
use serde::de::{DeserializeOwned, Visitor};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A layer's configuration, declared in the layer's own file: a plain serde
/// struct whose fields are the Python constructor's arguments (same names,
/// same order), its name, and how to build the layer from it.
pub trait LayerConfig: Clone + std::fmt::Debug + PartialEq + Serialize + DeserializeOwned {
    /// The layer's name: its JSON `"type"`, its variant of [`LayerSpec`],
    /// its Python class and [`Layer::name`]. `layer_registry!` checks at
    /// compile time that it equals the registered variant's name.
    const NAME: &'static str;

    /// Builds the layer, checking the values (the error names the layer and
    /// the bad value).
    fn build<T: Float>(&self) -> Result<Box<dyn Layer<T>>>;

    /// The elementwise activation this layer is, if it is one (the model
    /// folds it into a preceding layer that can apply it).
    fn activation(&self) -> Option<Act> {
        None
    }
}

/// Whether two strings are equal, in a constant context.
pub(crate) const fn same_name(a: &str, b: &str) -> bool {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    if a.len() != b.len() {
        return false;
    }
    let mut i = 0;
    while i < a.len() {
        if a[i] != b[i] {
            return false;
        }
        i += 1;
    }
    true
}

/// The field names serde's derive gives a struct, in declaration order (the
/// derive hands them to `deserialize_struct`; this deserializer keeps them
/// and stops there). Empty for anything but a plain struct.
pub(crate) fn config_fields<C: DeserializeOwned>() -> &'static [&'static str] {
    struct Fields<'a>(&'a mut &'static [&'static str]);
    impl<'de> Deserializer<'de> for Fields<'_> {
        type Error = serde::de::value::Error;
        fn deserialize_struct<V: Visitor<'de>>(
            self,
            _name: &'static str,
            fields: &'static [&'static str],
            _visitor: V,
        ) -> std::result::Result<V::Value, Self::Error> {
            *self.0 = fields;
            Err(serde::de::Error::custom("field names read"))
        }
        fn deserialize_any<V: Visitor<'de>>(self, _visitor: V) -> std::result::Result<V::Value, Self::Error> {
            Err(serde::de::Error::custom("not a struct"))
        }
        serde::forward_to_deserialize_any! {
            bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
            unit unit_struct newtype_struct seq tuple tuple_struct map enum identifier ignored_any
        }
    }
    let mut fields: &'static [&'static str] = &[];
    let _ = C::deserialize(Fields(&mut fields));
    fields
}

/// Defines [`LayerSpec`] from the list of registered layers, one
/// `Name: module::Config,` line each: the enum (a variant `Name(Config)`
/// per layer, tagged in JSON by `"type": "Name"`), `From<Config>`, the
/// re-export `pub use module::Config`, and the methods that dispatch to
/// each [`LayerConfig`]: `build`, `activation`, `display_name`, and the
/// registered names with their arguments.
macro_rules! layer_registry {
    ($($(#[$doc:meta])* $name:ident: $module:ident::$config:ident,)+) => {
        $(pub use $module::$config;)+

        /// A layer's configuration: one variant per registered layer (the
        /// list in `layers/mod.rs`), each holding the config struct its file
        /// declares. In JSON, `{"type": "Dense", "in_features": 3, ...}`.
        #[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
        #[serde(tag = "type")]
        pub enum LayerSpec {
            $(
                #[doc = concat!("`", stringify!($name), "`, configured by [`", stringify!($config), "`].")]
                $(#[$doc])*
                $name($config),
            )+
        }

        $(
            const _: () = assert!(
                spec::same_name(<$config as LayerConfig>::NAME, stringify!($name)),
                concat!(stringify!($config), "::NAME must be \"", stringify!($name), "\", its registered name"),
            );

            impl From<$config> for LayerSpec {
                fn from(config: $config) -> Self {
                    LayerSpec::$name(config)
                }
            }
        )+

        impl LayerSpec {
            /// Every registered layer's name, in registration order.
            pub const NAMES: &'static [&'static str] = &[$(stringify!($name)),+];

            /// Builds the layer; the error names the layer and the bad value.
            pub fn build<T: crate::float::Float>(&self) -> crate::error::Result<Box<dyn Layer<T>>> {
                match self {
                    $(LayerSpec::$name(c) => c.build::<T>(),)+
                }
            }

            /// The activation this spec is, if it is one.
            pub fn activation(&self) -> Option<crate::kernels::activation::Act> {
                match self {
                    $(LayerSpec::$name(c) => c.activation(),)+
                }
            }

            /// The layer's name: its JSON `"type"` and Python class name.
            pub fn display_name(&self) -> &'static str {
                match self {
                    $(LayerSpec::$name(_) => <$config as LayerConfig>::NAME,)+
                }
            }

            /// A registered layer's arguments (its config's fields, in
            /// order), or `None` for an unknown name.
            pub fn arguments(name: &str) -> Option<&'static [&'static str]> {
                match name {
                    $(stringify!($name) => Some(spec::config_fields::<$config>()),)+
                    _ => None,
                }
            }
        }
    };
}

/// What a layer declares, as [`LayerSpec::info`] reports it.
#[derive(Clone, Debug, PartialEq)]
pub struct LayerInfo {
    /// Trainable parameters, in `state_dict` order and shape.
    pub params: Vec<ParamDecl>,
    /// Buffers (non-trainable state), after the parameters.
    pub buffers: Vec<BufferDecl>,
    /// The number of trainable scalars (the parameters' elements), `None`
    /// when it overflows `usize` (such a layer can never be allocated; the
    /// shapes still say how large it is).
    pub num_params: Option<usize>,
    /// The per-sample output shape, when an input shape was given.
    pub output_shape: Option<Vec<usize>>,
}

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
pub(crate) fn opt_float<'de, D: Deserializer<'de>>(d: D) -> std::result::Result<Option<f64>, D::Error> {
    use serde::de::IntoDeserializer as _;
    match serde_json::Value::deserialize(d)? {
        serde_json::Value::Null => Ok(None),
        v => float(v.into_deserializer()).map(Some).map_err(serde::de::Error::custom),
    }
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

    /// Checks the configuration's values (by building the layer).
    pub fn validate(&self) -> Result<()> {
        self.build::<f32>().map(drop)
    }

    /// The layer's parameters and buffers (names and shapes), its parameter
    /// count and, given a per-sample input shape, its output shape (or why
    /// that input does not fit). What the Python side asks instead of
    /// repeating each layer's shapes.
    pub fn info(&self, input_shape: Option<&[usize]>) -> Result<LayerInfo> {
        let layer = self.build::<f32>()?;
        let params = layer.params();
        let num_params = params.iter().try_fold(0usize, |sum, p| {
            p.shape.iter().try_fold(1usize, |a, &b| a.checked_mul(b))?.checked_add(sum)
        });
        let output_shape = match input_shape {
            Some(shape) => Some(
                layer
                    .output_shape(shape)
                    .map_err(|e| Error { message: format!("{}: {}", self.display_name(), e.message), ..e })?,
            ),
            None => None,
        };
        Ok(LayerInfo { params, buffers: layer.buffers(), num_params, output_shape })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::layers::{
        BatchNorm2DSpec, Conv2DSpec, ConvTranspose2DSpec, DenseSpec, IdentitySpec, Init, Upsample2DSpec,
        UpsampleMode,
    };

    #[test]
    fn json_round_trip_and_errors() {
        let spec = LayerSpec::Conv2D(Conv2DSpec {
            in_channels: 1,
            out_channels: 8,
            kernel_size: [3, 3],
            stride: [1, 1],
            padding: Padding::Same,
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        });
        let text = spec.to_json();
        assert_eq!(LayerSpec::from_json(&text).unwrap(), spec);
        let dense =
            r#"{"type": "Dense", "in_features": 3, "out_features": 2, "bias": true, "init": "xavier"}"#;
        assert!(matches!(
            LayerSpec::from_json(dense).unwrap(),
            LayerSpec::Dense(DenseSpec { init: Init::Xavier, .. })
        ));
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
            LayerSpec::Dense(DenseSpec { in_features: 3, out_features: 2, bias: true, init: Init::Xavier })
                .to_json();
        assert!(err(&dense.replace(":3", ":-3")).contains("Dense: in_features must be >= 1, got -3"));
        assert!(err(&dense.replace("\"xavier\"", "null")).starts_with("Dense: unknown init null"));
        let bn = r#"{"type": "BatchNorm2D", "num_features": 4, "eps": 1e-5, "momentum": null}"#;
        assert!(matches!(
            LayerSpec::from_json(bn).unwrap(),
            LayerSpec::BatchNorm2D(BatchNorm2DSpec { momentum: None, .. })
        ));
        assert!(err(&bn.replace("null", "1.5")).contains("momentum must be in [0, 1]"));
        assert!(err(&bn.replace("1e-5", "0")).contains("eps must be a finite value > 0"));
        let pool = r#"{"type": "MaxPool2D", "kernel_size": [3, 3], "stride": [1, 1], "padding": [2, 1]}"#;
        assert!(err(pool).contains("padding must be at most half the kernel size"));
        let strided = text.replace("\"stride\":[1,1]", "\"stride\":[2,1]");
        assert!(err(&strided).contains("padding=\"same\" needs stride 1"));
        let up = r#"{"type": "Upsample2D", "scale_factor": [2, 3], "mode": "nearest"}"#;
        let parsed = LayerSpec::from_json(up).unwrap();
        let want = Upsample2DSpec { scale_factor: [2, 3], mode: UpsampleMode::Nearest };
        assert_eq!(parsed, LayerSpec::Upsample2D(want));
        assert_eq!(LayerSpec::from_json(&parsed.to_json()).unwrap(), parsed);
        assert!(err(&up.replace("nearest", "cubic"))
            .contains("Upsample2D: unknown mode \"cubic\"; expected \"nearest\" or \"bilinear\""));
        assert!(err(&up.replace("[2, 3]", "[2, 0]")).contains("scale_factor must be >= 1, got (2, 0)"));
        let ct = LayerSpec::from(ConvTranspose2DSpec {
            in_channels: 4,
            out_channels: 2,
            kernel_size: [3, 3],
            stride: [2, 2],
            padding: [1, 1],
            output_padding: [1, 1],
            dilation: [1, 1],
            bias: true,
            init: Init::He,
        });
        let text_ct = ct.to_json();
        assert_eq!(LayerSpec::from_json(&text_ct).unwrap(), ct);
        let bad_op = text_ct.replace("\"output_padding\":[1,1]", "\"output_padding\":[-1,1]");
        assert!(err(&bad_op).contains("ConvTranspose2D: output_padding must be >= 0, got -1"));
        let big_op = text_ct.replace("\"output_padding\":[1,1]", "\"output_padding\":[2,1]");
        assert!(err(&big_op).contains("output_padding must be smaller than either stride or dilation"));
        let identity = LayerSpec::from_json(r#"{"type": "Identity"}"#).unwrap();
        assert_eq!(identity, LayerSpec::Identity(IdentitySpec {}));
    }

    /// The JSON a config writes is the format saved models carry: the tag
    /// first, then the fields in the Python constructor's order.
    #[test]
    fn json_format_is_the_saved_format() {
        let dense =
            LayerSpec::from(DenseSpec { in_features: 3, out_features: 2, bias: true, init: Init::Xavier });
        let text = r#"{"type":"Dense","in_features":3,"out_features":2,"bias":true,"init":"xavier"}"#;
        assert_eq!(dense.to_json(), text);
        assert_eq!(LayerSpec::from_json(r#"{"type": "ReLU"}"#).unwrap().to_json(), r#"{"type":"ReLU"}"#);
        let bn = r#"{"type":"BatchNorm1D","num_features":4,"eps":0.001,"momentum":null}"#;
        assert_eq!(LayerSpec::from_json(bn).unwrap().to_json(), bn);
        let conv = r#"{"type":"Conv1D","in_channels":2,"out_channels":3,"kernel_size":3,"stride":1,"padding":1,"dilation":1,"bias":false,"init":"he"}"#;
        assert_eq!(LayerSpec::from_json(conv).unwrap().to_json(), conv);
    }

    /// Every registered layer has a unique name, its config's fields as its
    /// arguments, and a display name equal to its JSON tag.
    #[test]
    fn registry_names_and_arguments() {
        let mut names = LayerSpec::NAMES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), LayerSpec::NAMES.len());
        assert!(LayerSpec::NAMES.contains(&"Dense") && LayerSpec::NAMES.contains(&"BatchNorm2D"));
        assert_eq!(LayerSpec::arguments("Dense"), Some(&["in_features", "out_features", "bias", "init"][..]));
        assert_eq!(LayerSpec::arguments("MaxPool1D"), Some(&["kernel_size", "stride", "padding"][..]));
        assert_eq!(LayerSpec::arguments("BatchNorm2D"), Some(&["num_features", "eps", "momentum"][..]));
        assert_eq!(LayerSpec::arguments("ReLU"), Some(&[][..]));
        assert_eq!(LayerSpec::arguments("Conv3D"), None);
        for name in LayerSpec::NAMES {
            if LayerSpec::arguments(name) == Some(&[]) {
                let spec = LayerSpec::from_json(&format!(r#"{{"type": "{name}"}}"#)).unwrap();
                assert_eq!(spec.display_name(), *name);
                assert_eq!(spec.build::<f64>().unwrap().name(), *name);
            }
        }
    }

    /// `info` reports what the built layer declares.
    #[test]
    fn info_reports_parameters_buffers_and_output_shape() {
        let dense =
            LayerSpec::from(DenseSpec { in_features: 3, out_features: 2, bias: true, init: Init::He });
        let info = dense.info(Some(&[5, 3])).unwrap();
        let shapes: Vec<_> = info.params.iter().map(|p| (p.name, p.shape.clone())).collect();
        assert_eq!(shapes, [("weight", vec![2, 3]), ("bias", vec![2])]);
        assert_eq!(info.num_params, Some(8));
        assert_eq!(info.output_shape, Some(vec![5, 2]));
        assert!(info.buffers.is_empty());
        let e = dense.info(Some(&[4])).unwrap_err().message;
        assert!(e.starts_with("Dense: "), "{e}");
        let conv = r#"{"type": "Conv2D", "in_channels": 3, "out_channels": 4, "kernel_size": [3, 3],
            "stride": [2, 2], "padding": [1, 1], "dilation": [1, 1], "bias": false, "init": "he"}"#;
        let info = LayerSpec::from_json(conv).unwrap().info(Some(&[3, 8, 8])).unwrap();
        assert_eq!((info.num_params, info.output_shape), (Some(4 * 3 * 9), Some(vec![4, 4, 4])));
        assert_eq!(info.params.len(), 1);
        let bn = r#"{"type": "BatchNorm2D", "num_features": 6, "eps": 1e-5, "momentum": 0.1}"#;
        let info = LayerSpec::from_json(bn).unwrap().info(None).unwrap();
        let huge = LayerSpec::from(DenseSpec {
            in_features: 1 << 40,
            out_features: 1 << 40,
            bias: true,
            init: Init::He,
        });
        let huge = huge.info(None).unwrap();
        assert_eq!((huge.num_params, &huge.params[1].shape), (None, &vec![1 << 40]));
        let buffers: Vec<_> = info.buffers.iter().map(|b| (b.name, b.shape.clone())).collect();
        assert_eq!(info.num_params, Some(12));
        assert_eq!(buffers[0], ("running_mean", vec![6]));
        assert_eq!(info.output_shape, None);
    }
}
