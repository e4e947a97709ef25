//! Safetensors files, through the `safetensors` crate: tensors by name plus
//! a string-to-string metadata map, little-endian, no code on load.
//!
//! Files are untrusted input. [`decode`] lets the crate check the header
//! (its length, at most 100 MB and inside the file; valid JSON; known
//! dtypes; offsets contiguous, non-overlapping and covering the data
//! exactly; shapes whose element count does not overflow and matches the
//! byte range) before this module allocates anything the file controls:
//! every allocation after that is bounded by the file's own size. float16
//! and bfloat16 are widened to float32 and every integer type to int64.
//! [`write_atomic`] replaces a file so that a reader (or a crash) sees the
//! old file or the new one, never a part.

use crate::error::{Error, Result};
use half::{bf16, f16};
use safetensors::tensor::{Dtype, SafeTensorError, TensorView, View};
use safetensors::SafeTensors;
use std::borrow::Cow;
use std::collections::{BTreeMap, HashMap};
use std::fs;
use std::io::Write;
use std::path::{Path, PathBuf};

/// A tensor's values as read: floats keep their width (float16 and
/// bfloat16 become float32), integers become int64.
#[derive(Clone, Debug, PartialEq)]
pub enum Values {
    F32(Vec<f32>),
    F64(Vec<f64>),
    I64(Vec<i64>),
}

impl Values {
    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Values::F32(v) => v.len(),
            Values::F64(v) => v.len(),
            Values::I64(v) => v.len(),
        }
    }

    /// Whether there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// One tensor read from a file.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    pub name: String,
    pub shape: Vec<usize>,
    /// The dtype as the file names it (`"F16"`, `"F32"`, ...).
    pub dtype: String,
    pub values: Values,
}

/// The contents of a safetensors file: tensors sorted by name, and the
/// metadata map (empty when the file has none).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Contents {
    pub tensors: Vec<Tensor>,
    pub metadata: BTreeMap<String, String>,
}

/// Values to write, borrowed.
#[derive(Clone, Copy, Debug)]
pub enum ValuesRef<'a> {
    F32(&'a [f32]),
    F64(&'a [f64]),
    I64(&'a [i64]),
}

impl ValuesRef<'_> {
    fn len(&self) -> usize {
        match self {
            ValuesRef::F32(v) => v.len(),
            ValuesRef::F64(v) => v.len(),
            ValuesRef::I64(v) => v.len(),
        }
    }
}

/// One tensor to write.
#[derive(Clone, Copy, Debug)]
pub struct TensorRef<'a> {
    pub name: &'a str,
    pub shape: &'a [usize],
    pub values: ValuesRef<'a>,
}

impl View for TensorRef<'_> {
    fn dtype(&self) -> Dtype {
        match self.values {
            ValuesRef::F32(_) => Dtype::F32,
            ValuesRef::F64(_) => Dtype::F64,
            ValuesRef::I64(_) => Dtype::I64,
        }
    }

    fn shape(&self) -> &[usize] {
        self.shape
    }

    fn data(&self) -> Cow<'_, [u8]> {
        if cfg!(target_endian = "little") {
            // The file's byte order is the machine's: the values as they lie.
            return Cow::Borrowed(match self.values {
                ValuesRef::F32(v) => bytemuck::cast_slice(v),
                ValuesRef::F64(v) => bytemuck::cast_slice(v),
                ValuesRef::I64(v) => bytemuck::cast_slice(v),
            });
        }
        let bytes = match self.values {
            ValuesRef::F32(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ValuesRef::F64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            ValuesRef::I64(v) => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        };
        Cow::Owned(bytes)
    }

    fn data_len(&self) -> usize {
        let width = if matches!(self.values, ValuesRef::F32(_)) { 4 } else { 8 };
        self.values.len() * width
    }
}

fn file_error(e: SafeTensorError) -> Error {
    let why = match e {
        SafeTensorError::HeaderTooSmall => "too short for a safetensors header (8 bytes of length)".into(),
        SafeTensorError::HeaderTooLarge => "the header length is over the 100 MB limit".into(),
        SafeTensorError::InvalidHeaderLength => "the header length points past the end of the file".into(),
        SafeTensorError::InvalidHeader(_) => "the header is not UTF-8 text".into(),
        SafeTensorError::InvalidHeaderDeserialization(e) => format!("the header is not valid JSON ({e})"),
        SafeTensorError::InvalidOffset(name) => {
            format!("tensor {name:?} has data offsets that overlap, leave a gap or run past the data")
        }
        SafeTensorError::TensorInvalidInfo => "a tensor's shape does not match its byte range".into(),
        SafeTensorError::ValidationOverflow => "a tensor's shape overflows".into(),
        SafeTensorError::MetadataIncompleteBuffer => {
            "the data section does not match the header's tensors".into()
        }
        SafeTensorError::MisalignedSlice => "a tensor's byte range is not a whole number of bytes".into(),
        other => other.to_string(),
    };
    Error::value(format!("not a valid safetensors file: {why}"))
}

fn widen<const N: usize, T>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    let (chunks, _) = data.as_chunks::<N>();
    chunks.iter().map(|c| f(*c)).collect()
}

/// Little-endian values of the machine's own type: a copy (aligned) on
/// little-endian machines, a conversion elsewhere.
fn native<const N: usize, T: bytemuck::Pod>(data: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
    if cfg!(target_endian = "little") {
        bytemuck::pod_collect_to_vec(data)
    } else {
        widen(data, f)
    }
}

fn values_of(view: &TensorView<'_>, name: &str) -> Result<Values> {
    let d = view.data();
    Ok(match view.dtype() {
        Dtype::F32 => Values::F32(native(d, f32::from_le_bytes)),
        Dtype::F64 => Values::F64(native(d, f64::from_le_bytes)),
        Dtype::F16 => Values::F32(widen(d, |b| f16::from_le_bytes(b).to_f32())),
        Dtype::BF16 => Values::F32(widen(d, |b| bf16::from_le_bytes(b).to_f32())),
        Dtype::I64 => Values::I64(native(d, i64::from_le_bytes)),
        Dtype::I32 => Values::I64(widen(d, |b| i32::from_le_bytes(b) as i64)),
        Dtype::I16 => Values::I64(widen(d, |b| i16::from_le_bytes(b) as i64)),
        Dtype::I8 => Values::I64(widen(d, |b: [u8; 1]| b[0] as i8 as i64)),
        Dtype::U8 => Values::I64(widen(d, |b: [u8; 1]| b[0] as i64)),
        Dtype::U16 => Values::I64(widen(d, |b| u16::from_le_bytes(b) as i64)),
        Dtype::U32 => Values::I64(widen(d, |b| u32::from_le_bytes(b) as i64)),
        Dtype::U64 => {
            let v = widen(d, u64::from_le_bytes);
            if v.iter().any(|&x| x > i64::MAX as u64) {
                return Err(Error::value(format!("tensor {name:?}: a uint64 value does not fit in int64")));
            }
            Values::I64(v.into_iter().map(|x| x as i64).collect())
        }
        other => {
            return Err(Error::value(format!(
                "tensor {name:?} has dtype {other}, which ferrograd cannot read"
            )))
        }
    })
}

/// Parses and checks a whole safetensors file held in memory.
pub fn decode(bytes: &[u8]) -> Result<Contents> {
    let (_, header) = SafeTensors::read_metadata(bytes).map_err(file_error)?;
    let file = SafeTensors::deserialize(bytes).map_err(file_error)?;
    let mut tensors = Vec::with_capacity(file.len());
    for (name, view) in file.iter() {
        let values = values_of(&view, name)?;
        tensors.push(Tensor {
            name: name.to_string(),
            shape: view.shape().to_vec(),
            dtype: view.dtype().to_string(),
            values,
        });
    }
    tensors.sort_by(|a, b| a.name.cmp(&b.name));
    let metadata = header.metadata().clone().unwrap_or_default().into_iter().collect();
    Ok(Contents { tensors, metadata })
}

/// Serializes tensors and metadata into safetensors bytes. Names must be
/// unique and each shape must match its values.
pub fn encode(tensors: &[TensorRef<'_>], metadata: &BTreeMap<String, String>) -> Result<Vec<u8>> {
    let mut seen = std::collections::HashSet::new();
    for t in tensors {
        if !seen.insert(t.name) {
            return Err(Error::value(format!("tensor name {:?} appears twice", t.name)));
        }
        let n = t.shape.iter().try_fold(1usize, |a, &d| a.checked_mul(d));
        if n != Some(t.values.len()) {
            return Err(Error::shape(format!(
                "tensor {:?}: shape {:?} does not hold {} values",
                t.name,
                t.shape,
                t.values.len()
            )));
        }
    }
    let meta: HashMap<String, String> = metadata.clone().into_iter().collect();
    let info = if meta.is_empty() { None } else { Some(meta) };
    safetensors::serialize(tensors.iter().map(|t| (t.name, *t)), info)
        .map_err(|e| Error::value(e.to_string()))
}

/// An I/O error with the path in the message.
pub fn io_error(path: &Path, what: &str, e: std::io::Error) -> Error {
    let msg = format!("cannot {what} {}: {e}", path.display());
    if e.kind() == std::io::ErrorKind::NotFound {
        Error::not_found(msg)
    } else {
        Error::io(msg)
    }
}

/// Reads and checks a safetensors file.
pub fn read(path: &Path) -> Result<Contents> {
    let bytes = fs::read(path).map_err(|e| io_error(path, "read", e))?;
    decode(&bytes).map_err(|e| Error { message: format!("{}: {}", path.display(), e.message), ..e })
}

/// Temporary files of [`write_atomic`] for `path`: `.<name>.<pid>.tmp`.
fn temp_name(path: &Path, pid: u32) -> Option<PathBuf> {
    let name = path.file_name()?.to_str()?;
    Some(path.with_file_name(format!(".{name}.{pid}.tmp")))
}

/// Removes temporary files left for `path` by processes that no longer
/// run (killed while saving). Linux only: elsewhere nothing is removed.
fn sweep_stale(path: &Path) {
    if !cfg!(target_os = "linux") {
        return;
    }
    let (Some(dir), Some(name)) = (path.parent(), path.file_name().and_then(|n| n.to_str())) else {
        return;
    };
    let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
    let Ok(entries) = fs::read_dir(dir) else { return };
    let prefix = format!(".{name}.");
    for entry in entries.flatten() {
        let file = entry.file_name();
        let Some(f) = file.to_str() else { continue };
        let Some(pid) = f.strip_prefix(&prefix).and_then(|r| r.strip_suffix(".tmp")) else { continue };
        let Ok(pid) = pid.parse::<u32>() else { continue };
        if pid != std::process::id() && !Path::new(&format!("/proc/{pid}")).exists() {
            let _ = fs::remove_file(entry.path());
        }
    }
}

/// Writes `bytes` to `path` atomically: into a temporary file in the same
/// folder, flushed and fsynced, then renamed over `path` (and the folder
/// fsynced). A crash at any moment leaves the previous file intact; the
/// temporary files of killed writers are removed by the next write.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let tmp = temp_name(path, std::process::id())
        .ok_or_else(|| Error::value(format!("{} is not a file path", path.display())))?;
    sweep_stale(path);
    let result = (|| {
        let mut f = fs::File::create(&tmp).map_err(|e| io_error(&tmp, "create", e))?;
        f.write_all(bytes).map_err(|e| io_error(&tmp, "write", e))?;
        f.sync_all().map_err(|e| io_error(&tmp, "sync", e))?;
        drop(f);
        fs::rename(&tmp, path).map_err(|e| io_error(path, "replace", e))?;
        if let Some(dir) = path.parent() {
            let dir = if dir.as_os_str().is_empty() { Path::new(".") } else { dir };
            // Makes the rename durable; not every platform can open a folder.
            if let Ok(d) = fs::File::open(dir) {
                let _ = d.sync_all();
            }
        }
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<u8> {
        let w = [1.0f32, -2.0, 3.5, 0.25, 5.0, 6.0];
        let n = [7i64];
        let d = [0.1f64, 0.2];
        let tensors = [
            TensorRef { name: "0.weight", shape: &[2, 3], values: ValuesRef::F32(&w) },
            TensorRef { name: "1.num_batches_tracked", shape: &[], values: ValuesRef::I64(&n) },
            TensorRef { name: "2.bias", shape: &[2], values: ValuesRef::F64(&d) },
        ];
        let meta = BTreeMap::from([("format".to_string(), "pt".to_string())]);
        encode(&tensors, &meta).unwrap()
    }

    #[test]
    fn round_trip() {
        let c = decode(&sample()).unwrap();
        assert_eq!(c.metadata["format"], "pt");
        let names: Vec<_> = c.tensors.iter().map(|t| t.name.as_str()).collect();
        assert_eq!(names, ["0.weight", "1.num_batches_tracked", "2.bias"]);
        assert_eq!(c.tensors[0].shape, [2, 3]);
        assert_eq!(c.tensors[0].values, Values::F32(vec![1.0, -2.0, 3.5, 0.25, 5.0, 6.0]));
        assert_eq!(c.tensors[1].shape, Vec::<usize>::new());
        assert_eq!(c.tensors[1].values, Values::I64(vec![7]));
        assert_eq!(c.tensors[2].values, Values::F64(vec![0.1, 0.2]));
    }

    #[test]
    fn half_precision_is_widened() {
        let h: Vec<u8> = [1.5f32, -0.25].iter().flat_map(|&x| f16::from_f32(x).to_le_bytes()).collect();
        let b: Vec<u8> = [3.0f32, 0.5].iter().flat_map(|&x| bf16::from_f32(x).to_le_bytes()).collect();
        let header = r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]},"b":{"dtype":"BF16","shape":[2],"data_offsets":[4,8]}}"#;
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header.as_bytes());
        file.extend(h);
        file.extend(b);
        let c = decode(&file).unwrap();
        assert_eq!(c.tensors[0].values, Values::F32(vec![1.5, -0.25]));
        assert_eq!(c.tensors[0].dtype, "F16");
        assert_eq!(c.tensors[1].values, Values::F32(vec![3.0, 0.5]));
    }

    fn with_header(header: &str, data: usize) -> Vec<u8> {
        let mut file = (header.len() as u64).to_le_bytes().to_vec();
        file.extend(header.as_bytes());
        file.extend(std::iter::repeat_n(0u8, data));
        file
    }

    #[test]
    fn bad_files_are_errors() {
        let good = sample();
        let cases: Vec<(Vec<u8>, &str)> = vec![
            (vec![], "too short"),
            (good[..good.len() - 1].to_vec(), "data section"),
            (u64::MAX.to_le_bytes().to_vec(), "100 MB"),
            ([&1000u64.to_le_bytes()[..], b"{}"].concat(), "past the end"),
            (with_header("{not json", 0), "not valid JSON"),
            (with_header(r#"{"a":{"dtype":"Q8","shape":[1],"data_offsets":[0,1]}}"#, 1), "not valid JSON"),
            (with_header(r#"{"a":{"dtype":"F32","shape":[-1],"data_offsets":[0,4]}}"#, 4), "not valid JSON"),
            (with_header(r#"{"a":{"dtype":"F32","shape":[3],"data_offsets":[0,8]}}"#, 8), "shape"),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[4611686018427387904,8],"data_offsets":[0,8]}}"#,
                    8,
                ),
                "overflow",
            ),
            (with_header(r#"{"a":{"dtype":"F32","shape":[20],"data_offsets":[0,80]}}"#, 8), "data section"),
            (
                with_header(
                    r#"{"a":{"dtype":"F32","shape":[2],"data_offsets":[0,8]},"b":{"dtype":"F32","shape":[2],"data_offsets":[4,12]}}"#,
                    12,
                ),
                "overlap",
            ),
            (with_header(r#"{"a":{"dtype":"C64","shape":[1],"data_offsets":[0,8]}}"#, 8), "cannot read"),
            (with_header(r#"{"a":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#, 0), "data section"),
        ];
        for (bytes, want) in cases {
            let e = decode(&bytes).expect_err(want);
            assert!(e.message.contains(want), "{want:?} not in {:?}", e.message);
        }
        let mut big = with_header(r#"{"a":{"dtype":"U64","shape":[1],"data_offsets":[0,8]}}"#, 0);
        big.extend(u64::MAX.to_le_bytes());
        assert!(decode(&big).unwrap_err().message.contains("int64"));
    }

    #[test]
    fn encode_checks_shapes_and_names() {
        let w = [1.0f32; 3];
        let t = TensorRef { name: "w", shape: &[2, 2], values: ValuesRef::F32(&w) };
        assert!(encode(&[t], &BTreeMap::new()).is_err());
        let t = TensorRef { name: "w", shape: &[3], values: ValuesRef::F32(&w) };
        assert!(encode(&[t, t], &BTreeMap::new()).unwrap_err().message.contains("twice"));
    }

    #[test]
    fn atomic_write_replaces_and_sweeps() {
        let dir = std::env::temp_dir().join(format!("fg-persist-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        let path = dir.join("m.safetensors");
        // A stale temporary file of a process that is gone (no such pid runs).
        let stale = temp_name(&path, u32::MAX - 1).unwrap();
        fs::write(&stale, b"partial").unwrap();
        write_atomic(&path, &sample()).unwrap();
        assert!(read(&path).is_ok());
        write_atomic(&path, b"second").unwrap();
        assert_eq!(fs::read(&path).unwrap(), b"second");
        let left: Vec<_> = fs::read_dir(&dir).unwrap().flatten().map(|e| e.file_name()).collect();
        if cfg!(target_os = "linux") {
            assert_eq!(left, [std::ffi::OsString::from("m.safetensors")]);
        }
        assert_eq!(read(&dir.join("missing")).unwrap_err().kind, crate::ErrorKind::NotFound);
        fs::remove_dir_all(&dir).unwrap();
    }

    /// A deterministic mutation loop over `sample()` (bit flips, interesting
    /// bytes, truncation, extension, chunk copies, length-prefix and number
    /// rewrites): `decode` must return `Ok` or `Err`, never panic.
    #[test]
    fn mutants_never_panic() {
        let seeds = [sample(), with_header(r#"{"a":{"dtype":"F16","shape":[2],"data_offsets":[0,4]}}"#, 4)];
        let mut state = 0x9e37_79b9_7f4a_7c15u64;
        let mut next = move |n: usize| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state % n.max(1) as u64) as usize
        };
        let interesting = [0u8, 0xff, 0x7f, 0x80, b'-', b'9', b'"', b'{', b']'];
        let (mut ok, mut err) = (0usize, 0usize);
        for _ in 0..20_000 {
            let mut f = seeds[next(seeds.len())].clone();
            for _ in 0..1 + next(4) {
                let len = f.len();
                match next(8) {
                    0 if len > 0 => f[next(len)] ^= 1 << next(8),
                    1 if len > 0 => f[next(len)] = interesting[next(interesting.len())],
                    2 => f.truncate(next(len + 1)),
                    3 => f.extend(std::iter::repeat_n(interesting[next(interesting.len())], 1 + next(64))),
                    4 if len > 0 => {
                        let (a, n) = (next(len), 1 + next(32));
                        let chunk: Vec<u8> = f[a..(a + n).min(len)].to_vec();
                        let at = next(len + 1);
                        f.splice(at..at, chunk);
                    }
                    5 if len >= 8 => {
                        let v = [0u64, 1, 7, 8, u64::MAX, 1 << 63, 100_000_001, len as u64 - 8];
                        f[..8].copy_from_slice(&v[next(v.len())].to_le_bytes());
                    }
                    6 => {
                        // A number in the header text becomes another one.
                        let digits: Vec<usize> = (8..len).filter(|&i| f[i].is_ascii_digit()).collect();
                        if !digits.is_empty() {
                            let at = digits[next(digits.len())];
                            let reps: [&[u8]; 6] = [
                                b"18446744073709551615",
                                b"18446744073709551616",
                                b"-1",
                                b"0",
                                b"4294967295",
                                b"9223372036854775808",
                            ];
                            let rep = reps[next(reps.len())];
                            f.splice(at..at + 1, rep.iter().copied());
                        }
                    }
                    _ => {
                        // Fix the length prefix after the header grew or shrank.
                        if let Some(end) = f.iter().rposition(|&b| b == b'}') {
                            if end >= 8 {
                                f[..8].copy_from_slice(&(end as u64 - 7).to_le_bytes());
                            }
                        }
                    }
                }
            }
            match decode(&f) {
                Ok(_) => ok += 1,
                Err(e) => {
                    assert_eq!(e.kind, crate::ErrorKind::Value, "{e:?}");
                    err += 1;
                }
            }
        }
        assert!(ok > 0 && err > 0, "ok {ok}, err {err}");
    }
}
