"""The offline engine's precision: ``auto`` runs bfloat16 only where the hardware computes it."""

from pathlib import Path

import pytest

from resources.llm.vllm_backend import VLLMSettings, cpu_has_native_bf16, resolve_dtype

PLAIN = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_vnni\n"
BF16 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512bw avx512_bf16\n"
AMX = "processor\t: 0\nflags\t\t: fpu avx512f amx_tile amx_bf16 amx_int8\n"


def test_auto_is_float32_on_a_cpu_that_emulates_bfloat16():
    assert resolve_dtype("auto", on_cpu=True, cpuinfo=PLAIN) == "float32"


def test_auto_is_bfloat16_where_the_hardware_has_it():
    assert resolve_dtype("auto", on_cpu=True, cpuinfo=BF16) == "bfloat16"
    assert resolve_dtype("auto", on_cpu=True, cpuinfo=AMX) == "bfloat16"
    assert resolve_dtype("auto", on_cpu=False, cpuinfo=PLAIN) == "bfloat16"  # a GPU


def test_an_explicit_dtype_is_kept():
    assert resolve_dtype("bfloat16", on_cpu=True, cpuinfo=PLAIN) == "bfloat16"
    assert resolve_dtype("float16", on_cpu=False) == "float16"


def test_this_machine_is_read_from_proc_cpuinfo():
    """The default reads the real flags: the same answer as parsing the file's text."""
    text = Path("/proc/cpuinfo").read_text()
    assert cpu_has_native_bf16() == cpu_has_native_bf16(text)
    assert cpu_has_native_bf16(text) == any(
        f in line.split() for line in text.splitlines() if line.startswith("flags")
        for f in ("avx512_bf16", "amx_bf16"))


def test_settings_default_to_auto_and_keep_an_explicit_dtype():
    assert VLLMSettings().dtype == "auto"
    assert VLLMSettings(dtype="bfloat16").dtype == "bfloat16"


def test_the_profile_engine_takes_phi_llm_dtype(tmp_path):
    from resources import ArtifactStore, build_llm, load_profile

    profile = load_profile({"PHI_HOME": str(tmp_path)})
    store = ArtifactStore(root=str(tmp_path / "artifacts"))
    assert build_llm(profile, store, {}).dtype == "auto"
    assert build_llm(profile, store, {"PHI_LLM_DTYPE": "bfloat16"}).dtype == "bfloat16"


def test_the_engine_core_runs_inside_the_engine_process_on_cpu_only(monkeypatch):
    monkeypatch.delenv("VLLM_ENABLE_V1_MULTIPROCESSING", raising=False)
    assert VLLMSettings().in_process_core(on_cpu=True)
    assert not VLLMSettings().in_process_core(on_cpu=False)  # a GPU keeps vLLM's separate core process
    assert not VLLMSettings(engine_core="process").in_process_core(on_cpu=True)
    assert VLLMSettings(engine_core="in_process").in_process_core(on_cpu=False)
    monkeypatch.setenv("VLLM_ENABLE_V1_MULTIPROCESSING", "1")  # the caller's own choice wins over auto
    assert not VLLMSettings().in_process_core(on_cpu=True)


def test_an_unknown_engine_core_is_refused():
    with pytest.raises(ValueError, match="engine_core must be one of auto, in_process, process, got 'thread'"):
        VLLMSettings(engine_core="thread")
