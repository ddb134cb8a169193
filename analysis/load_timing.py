"""Where a trial's model load goes: random-weight checkpoint -> from_pretrained (NF4) ->
prepare_model_for_kbit_training -> get_peft_model, each timed, in this process.
Usage: python -m analysis.load_timing MODEL DTYPE THREADS [REPEATS]  (on a CUDA host)
"""

import sys
import time
from itertools import pairwise


def main(name: str, dtype: str, threads: int, repeats: int) -> None:
    import torch
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from bench import qlora
    from bench.catalog import load_catalog

    torch.set_num_threads(threads)
    t0 = time.perf_counter()
    torch.zeros(1, device="cuda")
    ctx = time.perf_counter() - t0
    source = qlora.random_weights_dir(name, load_catalog()[name].config, "cuda")
    dt = qlora.DTYPES[dtype]
    for i in range(repeats):
        marks = [time.perf_counter()]
        quant = BitsAndBytesConfig(
            load_in_4bit=True,
            bnb_4bit_quant_type="nf4",
            bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=dt,
        )
        model = AutoModelForCausalLM.from_pretrained(
            source, quantization_config=quant, dtype=dt, device_map={"": 0}, attn_implementation="sdpa"
        )
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=True)
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        model = get_peft_model(model, LoraConfig(r=8, lora_alpha=16, target_modules="all-linear"))
        torch.cuda.synchronize()
        marks.append(time.perf_counter())
        parts = [b - a for a, b in pairwise(marks)]
        print(
            f"{name} {dtype} threads={threads} run={i} cuda_init={ctx:.2f} from_pretrained={parts[0]:.2f} "
            f"prepare={parts[1]:.2f} peft={parts[2]:.2f} total={sum(parts):.2f}",
            flush=True,
        )
        del model
        qlora.free_memory("cuda")


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4]) if len(sys.argv) > 4 else 2)
