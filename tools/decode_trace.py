#!/usr/bin/env python3
"""Where a decode step's time goes on the GPU, kernel by kernel, as the kernels overlap under programmatic
dependent launch (no profiler needed: ncu serialises the kernels, and nsys is not on the H200 machine).

`patch` writes an instrumented copy of te_llama_kernels.cu: in every kernel that calls te_llama__pdl_start or
te_llama__pdl_start_early, thread 0 of each block records %globaltimer (32 ns ticks on the H200) at three points:
before the kernel's griddepcontrol.wait, after it (the dependency released), and at the block's exit. Records go
to a ring of 4096 a multiprocessor, so the last several steps survive; the CUDA context's teardown writes them to
the file named by the environment variable TE_TR. cuBLASLt's kernels (the lm_head) are not traced: their time
shows as the next traced kernel's release latency. About 1% slower than the plain build.

`report` groups the records into launches (a launch has each block id once), cuts them into steps at each
argmax / sampling launch, and prints one step launch by launch and the means per kernel over the steps:
  rel    release latency: the previous launch's last block exit to this launch's first released block
  span   this launch's first release to its last block exit
  crit   rel + span: what the launch adds to the step's chain
  pre    blocks that started before their release (launched early under PDL)
With --kernel GRID,THREADS also the block end times of that kernel against the blocks on each multiprocessor.

Usage, from the repository's root (an sm_90a build of build/bench's source; bench/NOTES.md run 18):
  mkdir -p build/trace && cp te_llama.h build/trace/
  python3 tools/decode_trace.py patch te_llama_kernels.cu build/trace/te_llama_kernels.cu
  nvcc -O3 -std=c++17 -gencode arch=compute_90a,code=sm_90a -c build/trace/te_llama_kernels.cu -o build/trace/k.o
  L="$(dirname "$(command -v nvcc)")/../lib64"
  cc -O2 -std=c99 -DTE_LLAMA_CUDA -Ibuild/trace examples/bench.c build/trace/k.o -o build/trace/bench -L$L \\
      -Wl,-rpath,$L -lcublasLt -lcudart -lstdc++ -lm -lpthread
  TE_TR=build/trace/trace.bin build/trace/bench -m CKPT --backend cuda --dtype fp8 --prefill-batch 0 \\
      --decode-batch 1 --prompt 128 --new 128
  python3 tools/decode_trace.py report build/trace/trace.bin build/trace/te_llama_kernels.cu [--kernel 896,64]
The patch was written from the throwaway form that made run 18's traces (same records; that form also cleared
the ring after the dump); its `report` is what printed results/2026-11-30-run18-trace.txt.
"""

import argparse
import collections
import re
import struct
import sys

CAP, N_SM = 4096, 160  # records a multiprocessor (a power of 2), multiprocessors the ring has room for
RECORD = struct.Struct("4I3Q")  # line, blocks, threads, block id; t_entry, t_released, t_exit (ns)

INSTRUMENT = r'''
/* decode_trace.py: per-block timestamps of every PDL kernel, dumped at context teardown to $TE_TR */
#define TE_TR_CAP %(cap)d
struct te_tr_rec { unsigned line, grid, block, bid; unsigned long long t0, tw, te; };
__device__ te_tr_rec te_tr_buf[%(n_sm)d * TE_TR_CAP];
__device__ unsigned te_tr_n[%(n_sm)d];
__device__ __forceinline__ unsigned long long te_tr_now() {
    unsigned long long t;
    asm volatile("mov.u64 %%0, %%%%globaltimer;" : "=l"(t));
    return t;
}
struct te_tr_guard { /* records at the block's exit, whichever return it takes */
    unsigned long long *s;
    unsigned line;
    __device__ te_tr_guard(unsigned long long *s_, unsigned l) : s(s_), line(l) {
        if (threadIdx.x == 0 && threadIdx.y == 0) s[1] = te_tr_now();
    }
    __device__ ~te_tr_guard() {
        if (threadIdx.x || threadIdx.y) return;
        te_tr_rec r;
        unsigned sm;
        r.te = te_tr_now();
        asm volatile("mov.u32 %%0, %%%%smid;" : "=r"(sm));
        r.line = line; r.grid = gridDim.x * gridDim.y * gridDim.z; r.block = blockDim.x * blockDim.y;
        r.bid = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z); r.t0 = s[0]; r.tw = s[1];
        te_tr_buf[(size_t)sm * TE_TR_CAP + (atomicAdd(&te_tr_n[sm], 1u) & (TE_TR_CAP - 1))] = r;
    }
};
#define TE_TR_START(fn) __shared__ unsigned long long te_tr_s[2]; \
    if (threadIdx.x == 0 && threadIdx.y == 0) te_tr_s[0] = te_tr_now(); \
    fn(); \
    te_tr_guard te_tr_g(te_tr_s, __LINE__)
static void te_tr_dump() {
    static te_tr_rec h[%(n_sm)d * TE_TR_CAP];
    unsigned n[%(n_sm)d];
    const char *path = getenv("TE_TR");
    FILE *f;
    if (!path || cudaDeviceSynchronize() != cudaSuccess) return;
    cudaMemcpyFromSymbol(h, te_tr_buf, sizeof h);
    cudaMemcpyFromSymbol(n, te_tr_n, sizeof n);
    if (!(f = fopen(path, "wb"))) return;
    fwrite(n, sizeof n, 1, f);
    fwrite(h, sizeof h, 1, f);
    fclose(f);
}
'''


def patch(src_path, out_path):
    src = open(src_path).read()
    anchor = "__device__ __forceinline__ uint32_t te_llama__pack_bf16("
    teardown = "    if (ctx->stream) cudaStreamSynchronize(ctx->stream);\n    te_llama__fp8_release(m, ctx);\n"
    if src.count(anchor) != 1 or src.count(teardown) != 1:
        sys.exit("decode_trace: te_llama_kernels.cu no longer has the lines this patch anchors on")
    src = src.replace(anchor, INSTRUMENT % {"cap": CAP, "n_sm": N_SM} + anchor)
    src = src.replace(teardown, teardown.replace("    te_llama__fp8", "    te_tr_dump();\n    te_llama__fp8"))
    src, n = re.subn(r"^    (te_llama__pdl_start(?:_early)?)\(\);", r"    TE_TR_START(\1);", src, flags=re.M)
    open(out_path, "w").write(src)
    print(f"decode_trace: {n} kernels instrumented -> {out_path}")


def kernel_names(src_path):
    lines = open(src_path).read().split("\n")

    def name(line):  # the kernel whose body holds source line `line` (1-based)
        for i in range(line - 1, max(0, line - 400), -1):
            m = re.search(r"(te_llama__\w*kernel)\s*\(", lines[i])
            if m:
                return m.group(1).replace("te_llama__", "").replace("_kernel", "")
        return f"line {line}"
    return name


def load_launches(trace_path):
    data = open(trace_path, "rb").read()
    counts = struct.unpack_from(f"{N_SM}I", data)
    records, oldest = [], []
    for sm in range(N_SM):
        got = []
        for i in range(min(counts[sm], CAP)):
            r = RECORD.unpack_from(data, 4 * N_SM + (sm * CAP + i) * RECORD.size)
            if r[4]:
                got.append(r + (sm,))
        records += got
        if counts[sm] > CAP and got:  # this ring wrapped: records before its oldest are lost
            oldest.append(min(r[4] for r in got))
    start = max(oldest) if oldest else 0
    by_kernel = collections.defaultdict(list)
    for r in records:
        if r[4] >= start:
            by_kernel[r[:3]].append(r)
    launches = []
    for key, rs in by_kernel.items():
        rs.sort(key=lambda r: r[4])
        cur, seen = [], set()
        for r in rs:  # a launch has each block id once and `blocks` blocks
            if r[3] in seen or len(cur) == key[1]:
                launches.append((key, cur))
                cur, seen = [], set()
            cur.append(r)
            seen.add(r[3])
        launches.append((key, cur))
    return launches


def report(args):
    name = kernel_names(args.source)
    launches = load_launches(args.trace)
    table = []
    for (line, grid, block), rs in launches:
        released = min(r[5] for r in rs)
        table.append(dict(name=name(line), grid=grid, block=block, t0=min(r[4] for r in rs), R=released,
                          E=max(r[6] for r in rs), pre=sum(1 for r in rs if r[4] < released), rs=rs))
    table.sort(key=lambda d: d["t0"])
    steps, cur = [], []
    for d in table:
        cur.append(d)
        if d["name"] in ("argmax", "sample"):
            steps.append(cur)
            cur = []
    steps = steps[2:]  # the first two may hold launches cut by the ring
    if len(steps) < 2:
        sys.exit("decode_trace: fewer than two whole steps in the trace")
    us = lambda ns: ns / 1000.0
    print("steps:", len(steps), " step times (us):", " ".join(f"{us(s[-1]['E'] - p[-1]['E']):.1f}" for p, s in zip(steps, steps[1:])))
    print(f"\nthe last step, launch by launch (us; start from the step before's last exit)")
    print(f"{'#':>3} {'kernel':<20} {'blocks':>6} {'thr':>5} {'start':>8} {'rel':>6} {'span':>7} {'crit':>7} {'pre':>5}")
    prev = steps[-2][-1]["E"]
    base = prev
    for i, d in enumerate(steps[-1]):
        print(f"{i:>3} {d['name']:<20} {d['grid']:>6} {d['block']:>5} {us(d['t0'] - base):>8.1f} {us(d['R'] - prev):>6.2f} "
              f"{us(d['E'] - d['R']):>7.2f} {us(d['E'] - prev):>7.2f} {d['pre']:>5}")
        prev = d["E"]
    sums = collections.defaultdict(lambda: [0, 0.0, 0.0])
    for p, s in zip(steps, steps[1:]):
        prev = p[-1]["E"]
        for d in s:
            a = sums[(d["name"], d["grid"], d["block"])]
            a[0] += 1
            a[1] += us(d["R"] - prev)
            a[2] += us(d["E"] - d["R"])
            prev = d["E"]
    n_steps = len(steps) - 1
    print(f"\nper kernel, means over {n_steps} steps (us)")
    print(f"{'kernel':<20} {'blocks':>6} {'thr':>5} {'a step':>6} {'rel':>6} {'span':>7} {'crit':>7} {'a step':>8}")
    total = 0.0
    for (nm, g, b), (c, rel, span) in sorted(sums.items(), key=lambda kv: -(kv[1][1] + kv[1][2])):
        total += (rel + span) / n_steps
        print(f"{nm:<20} {g:>6} {b:>5} {c / n_steps:>6.1f} {rel / c:>6.2f} {span / c:>7.2f} {(rel + span) / c:>7.2f} "
              f"{(rel + span) / n_steps:>8.1f}")
    print(f"sum of crit a step: {total:.1f} us")
    if args.kernel:
        grid, threads = (int(x) for x in args.kernel.split(","))
        ends = collections.defaultdict(list)
        for d in table:
            if (d["grid"], d["block"]) != (grid, threads) or len(d["rs"]) != grid:
                continue
            per_sm = collections.Counter(r[7] for r in d["rs"])
            for r in d["rs"]:
                ends[per_sm[r[7]]].append(us(r[6] - d["R"]))
        print(f"\nblocks of {grid} x {threads}: exit after release (us) by blocks on the multiprocessor")
        for k, v in sorted(ends.items()):
            print(f"  {k:>2} a multiprocessor: {len(v):>7} blocks, mean {sum(v) / len(v):6.2f}, last {max(v):6.2f}")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    p = sub.add_parser("patch", help="write an instrumented copy of te_llama_kernels.cu")
    p.add_argument("source")
    p.add_argument("out")
    r = sub.add_parser("report", help="summarise a trace written by an instrumented build")
    r.add_argument("trace")
    r.add_argument("source", help="the instrumented source (its line numbers name the kernels)")
    r.add_argument("--kernel", help="GRID,THREADS: block end times of that kernel by blocks a multiprocessor")
    args = ap.parse_args()
    if args.cmd == "patch":
        patch(args.source, args.out)
    else:
        report(args)


if __name__ == "__main__":
    main()
