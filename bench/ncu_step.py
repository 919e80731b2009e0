"""ncu_step.py - one decode step of an ncu CSV, kernel by kernel.

    ncu --metrics gpu__time_duration.sum,dram__bytes_read.sum --csv --clock-control none --print-summary none \
        build/bench -m CKPT --backend cuda [--dtype fp8] --prefill-batch 0 --decode-batch B --prompt 16 --new 3 \
        --repeat 1 > step.csv
    python3 bench/ncu_step.py step.csv

The step is the kernels between the last two launches of the sampler (te_llama__argmax_kernel when greedy, else
te_llama__sample_kernel), i.e. the last decode step. Kernels of one name and grid are summed: count, total and per-launch time, DRAM bytes read and the
rate they give. ncu runs each kernel alone with the caches flushed, so a sum has no launch overlap and no L2
reuse between kernels: compare it with the step the benchmark measures (1 / decode tok/s)."""
import collections
import csv
import re
import sys


def kernels(path):
    rows = collections.OrderedDict()
    with open(path) as f:
        lines = [line for line in f if line.startswith('"')]
    scale_us = {"ns": 1e-3, "nsecond": 1e-3, "us": 1.0, "usecond": 1.0, "ms": 1e3, "msecond": 1e3}
    scale_mb = {"byte": 1e-6, "Kbyte": 1e-3, "Mbyte": 1.0, "Gbyte": 1e3}
    for r in csv.DictReader(lines):
        k = rows.setdefault(int(r["ID"]), {"name": r["Kernel Name"], "grid": r["Grid Size"], "us": 0.0, "mb": 0.0})
        v = float(r["Metric Value"].replace(",", ""))
        if r["Metric Name"] == "gpu__time_duration.sum":
            k["us"] = v * scale_us[r["Metric Unit"]]
        elif r["Metric Name"] == "dram__bytes_read.sum":
            k["mb"] = v * scale_mb[r["Metric Unit"]]
    return list(rows.values())


def main():
    ks = kernels(sys.argv[1])
    samples = [i for i, k in enumerate(ks) if "sample_kernel" in k["name"] or "argmax_kernel" in k["name"]]
    if len(samples) < 2:
        sys.exit("fewer than two sampler launches: no complete decode step in " + sys.argv[1])
    step = ks[samples[-2] + 1:samples[-1] + 1]
    groups = collections.OrderedDict()
    for k in step:
        name = re.sub(r"^void ", "", re.sub(r"\(.*", "", k["name"]))[:60]
        g = groups.setdefault((name, k["grid"]), [0, 0.0, 0.0])
        g[0] += 1
        g[1] += k["us"]
        g[2] += k["mb"]
    print("step: %d kernels, %.1f us summed, %.1f MB read from DRAM" % (len(step), sum(k["us"] for k in step),
                                                                       sum(k["mb"] for k in step)))
    for (name, grid), (n, us, mb) in sorted(groups.items(), key=lambda x: -x[1][1]):
        print("%-62s %-14s n=%3d tot %8.1f us  per %7.2f us  %8.1f MB  %5.2f TB/s" % (name, grid, n, us, us / n, mb, mb / us))


if __name__ == "__main__":
    main()
