//! Where tensors live: `run.device` in a config, `--device` on the command line.
//!
//! `cpu`, `cuda` (= `cuda:0`) or `cuda:N`. The CUDA build (`--features cuda`, README "GPU") is
//! optional; a CPU-only binary asked for a GPU says so and how to get one, and a CUDA binary on a
//! machine without a usable GPU names the device it could not open.

#[cfg(feature = "cuda")]
use anyhow::Context;
use anyhow::Result;
use candle_core::Device;

/// A parsed device name.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceSpec {
    Cpu,
    Cuda(usize),
}

impl DeviceSpec {
    pub fn parse(name: &str) -> std::result::Result<Self, String> {
        match name.trim() {
            "cpu" => Ok(Self::Cpu),
            "cuda" => Ok(Self::Cuda(0)),
            s => match s.strip_prefix("cuda:") {
                Some(n) => {
                    n.parse().map(Self::Cuda).map_err(|_| format!("`{s}`: the GPU index after `cuda:` must be a number (e.g. cuda:0)"))
                }
                None => Err(format!("`{s}` is not a device: use cpu, cuda or cuda:N")),
            },
        }
    }
}

/// Open the device `name` names.
pub fn open(name: &str) -> Result<Device> {
    match DeviceSpec::parse(name).map_err(|m| anyhow::anyhow!("device {m}"))? {
        DeviceSpec::Cpu => Ok(Device::Cpu),
        DeviceSpec::Cuda(i) => open_cuda(i),
    }
}

#[cfg(feature = "cuda")]
fn open_cuda(i: usize) -> Result<Device> {
    Device::new_cuda(i).with_context(|| format!("device `cuda:{i}`: no usable CUDA GPU with that index (check nvidia-smi, CUDA_VISIBLE_DEVICES and that the driver supports CUDA 13)"))
}

#[cfg(not(feature = "cuda"))]
fn open_cuda(i: usize) -> Result<Device> {
    anyhow::bail!("device `cuda:{i}`: this memtune binary was built without CUDA; build one with `cargo build --release --features cuda` (README, \"GPU\")")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_parse_and_bad_ones_are_named() {
        assert_eq!(DeviceSpec::parse("cpu"), Ok(DeviceSpec::Cpu));
        assert_eq!(DeviceSpec::parse("cuda"), Ok(DeviceSpec::Cuda(0)));
        assert_eq!(DeviceSpec::parse("cuda:3"), Ok(DeviceSpec::Cuda(3)));
        assert!(DeviceSpec::parse("cuda:x").unwrap_err().contains("cuda:x"));
        assert!(DeviceSpec::parse("gpu").unwrap_err().contains("`gpu`"));
        assert!(matches!(open("cpu"), Ok(Device::Cpu)));
    }

    #[cfg(not(feature = "cuda"))]
    #[test]
    fn cpu_build_asked_for_a_gpu_says_how_to_get_one() {
        let e = open("cuda:1").unwrap_err().to_string();
        assert!(e.contains("cuda:1") && e.contains("--features cuda"), "{e}");
    }
}
