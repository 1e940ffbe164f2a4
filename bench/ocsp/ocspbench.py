#!/usr/bin/env python3
"""Helpers of bench/ocsp/run.sh (the OCSP serving and pre-signing benchmark).

Subcommands (all write files or print one result; run.sh does the orchestration):

  import-list N OUT ISSUER          N certificates, random 16-byte serials, 1 % revoked
  requests ISSUER_PEM LIST K DIR    GET paths for wrk: DIR/{resp,nginx}-{hit,all}.txt
  dump DB ISSUER LIST K WWW ALL     the stored responses as files for nginx (WWW/r/<serial>
                                    for the K hit serials; WWW/m/<xx>/<serial> for all if ALL=1)
  free-port                         a free TCP port on 127.0.0.1
  prom URL REGEX                    sum of the Prometheus samples whose line matches REGEX
  presign-samples FILE N            the pre-signing rate from (time, signed) samples
  cpu-snap OUT ROLE=PID...          per-thread CPU ticks of each process (and its children)
  cpu-diff A B                      cores used between two snapshots, as JSON
  rusage OUT -- CMD...              runs CMD; writes its exit status, wall and CPU seconds
  wrk-result FILE                   the WRKJSON line of a wrk run (see the Lua scripts)
  wrk-record NAME ROUND WRKFILE CPU_A CPU_B [KEY=VALUE...]   one results.jsonl line for a run
  json KEY=VALUE...                 a JSON object (numbers stay numbers), for results.jsonl
  summary DIR                       the summary table (Markdown) from DIR/results.jsonl
"""

import base64
import hashlib
import json
import os
import re
import socket
import sqlite3
import statistics
import sys
import time
import urllib.parse
import urllib.request

TICKS = os.sysconf("SC_CLK_TCK")


# --- import list -------------------------------------------------------------------------------


def serial_hex(raw: bytes) -> str:
    """16 random bytes as a positive serial whose first byte is 0x01..0x7f: no DER padding
    byte, no leading zero to strip, so the hex is the same everywhere (import, store, files)."""
    b = bytearray(raw)
    b[0] = (b[0] & 0x7F) or 1
    return b.hex()


def cmd_import_list(n: str, out: str, issuer: str) -> None:
    n = int(n)
    now = int(time.time())
    raw = os.urandom(16 * n)
    lines = []
    for i in range(n):
        h = serial_hex(raw[16 * i : 16 * i + 16])
        if i % 100 == 50:  # 1 %: revoked a day ago, keyCompromise
            lines.append(f"{issuer} {h} revoked {now - 86400} 1\n")
        else:
            lines.append(f"{issuer} {h} good\n")
    with open(out, "w") as f:
        f.writelines(lines)


def read_serials(list_file: str, limit=None):
    out = []
    with open(list_file) as f:
        for line in f:
            parts = line.split()
            if len(parts) >= 3 and not parts[0].startswith("#"):
                out.append(parts[1].lower())
                if limit is not None and len(out) >= limit:
                    break
    return out


# --- OCSP requests -----------------------------------------------------------------------------


def tlv(tag: int, content: bytes) -> bytes:
    n = len(content)
    if n < 0x80:
        length = bytes([n])
    else:
        lb = n.to_bytes((n.bit_length() + 7) // 8, "big")
        length = bytes([0x80 | len(lb)]) + lb
    return bytes([tag]) + length + content


def der_uint(v: int) -> bytes:
    return v.to_bytes(v.bit_length() // 8 + 1, "big")


SHA1_ALG = tlv(0x30, tlv(0x06, bytes.fromhex("2b0e03021a")) + b"\x05\x00")


def issuer_hashes(pem_path: str):
    """(SHA-1 of the issuer's DER name, SHA-1 of its subjectPublicKey BIT STRING value)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    cert = x509.load_pem_x509_certificate(open(pem_path, "rb").read())
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )

    def parse(b, i):
        tag, ln = b[i], b[i + 1]
        i += 2
        if ln & 0x80:
            k = ln & 0x7F
            ln = int.from_bytes(b[i : i + k], "big")
            i += k
        return tag, i, i + ln

    _, body, _ = parse(spki, 0)
    _, _, alg_end = parse(spki, body)
    tag, bits_start, bits_end = parse(spki, alg_end)
    assert tag == 0x03
    key_bits = spki[bits_start + 1 : bits_end]
    return (
        hashlib.sha1(cert.subject.public_bytes()).digest(),
        hashlib.sha1(key_bits).digest(),
        cert,
    )


def ocsp_request(name_hash: bytes, key_hash: bytes, serial: int) -> bytes:
    """OCSPRequest { TBSRequest { requestList { Request { CertID (SHA-1) } } } }: what
    `openssl ocsp -no_nonce` and RFC 5019 clients send."""
    cert_id = tlv(
        0x30,
        SHA1_ALG + tlv(0x04, name_hash) + tlv(0x04, key_hash) + tlv(0x02, der_uint(serial)),
    )
    return tlv(0x30, tlv(0x30, tlv(0x30, tlv(0x30, cert_id))))


def get_path(der: bytes) -> str:
    return "/" + urllib.parse.quote(base64.b64encode(der).decode(), safe="")


def cmd_requests(issuer_pem: str, list_file: str, k: str, out_dir: str) -> None:
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.x509 import ocsp

    k = int(k)
    name_hash, key_hash, _ = issuer_hashes(issuer_pem)
    serials = read_serials(list_file)
    # The hand-built DER must be byte for byte what Python cryptography's builder makes.
    for h in serials[:200]:
        ours = ocsp_request(name_hash, key_hash, int(h, 16))
        theirs = (
            ocsp.OCSPRequestBuilder()
            .add_certificate_by_hash(name_hash, key_hash, int(h, 16), hashes.SHA1())
            .build()
            .public_bytes(serialization.Encoding.DER)
        )
        assert ours == theirs, (h, ours.hex(), theirs.hex())
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, "resp-all.txt"), "w") as ra, open(
        os.path.join(out_dir, "nginx-all.txt"), "w"
    ) as na, open(os.path.join(out_dir, "resp-hit.txt"), "w") as rh, open(
        os.path.join(out_dir, "nginx-hit.txt"), "w"
    ) as nh:
        for i, h in enumerate(serials):
            p = get_path(ocsp_request(name_hash, key_hash, int(h, 16)))
            ra.write(p + "\n")
            na.write(f"/m/{h[2:4]}/{h}\n")
            if i < k:
                rh.write(p + "\n")
                nh.write(f"/r/{h}\n")


# --- files for nginx ---------------------------------------------------------------------------


def cmd_dump(db: str, issuer: str, list_file: str, k: str, www: str, all_: str) -> None:
    hit = set(read_serials(list_file, int(k)))
    everything = all_ == "1"
    os.makedirs(os.path.join(www, "r"), exist_ok=True)
    if everything:
        for i in range(256):
            os.makedirs(os.path.join(www, "m", f"{i:02x}"), exist_ok=True)
    con = sqlite3.connect(db)
    n = written_hit = 0
    # The requests name certificates by SHA-1 CertIDs: the response of the SHA-1 slot
    # (cert_id_hash 1) is the one the responder sends, and nginx must send the same bytes.
    for serial, der in con.execute(
        "SELECT serial, der FROM responses WHERE issuer = ? AND cert_id_hash = 1", (issuer,)
    ):
        h = serial.hex()
        n += 1
        if h in hit:
            with open(os.path.join(www, "r", h), "wb") as f:
                f.write(der)
            written_hit += 1
        if everything:
            with open(os.path.join(www, "m", h[2:4], h), "wb") as f:
                f.write(der)
    con.close()
    print(f"{n} SHA-1 responses in the store; {written_hit} hit files; all files: {everything}")
    if written_hit != len(hit):
        sys.exit(f"only {written_hit} of the {len(hit)} hit serials have a stored response")


# --- small things ------------------------------------------------------------------------------


def cmd_free_port() -> None:
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    print(s.getsockname()[1])
    s.close()


def prom_sum(url: str, regex: str) -> float:
    text = urllib.request.urlopen(url, timeout=5).read().decode()
    pat = re.compile(regex)
    total = 0.0
    for line in text.splitlines():
        if line.startswith("#") or not pat.search(line):
            continue
        total += float(line.rsplit(None, 1)[1])
    return total


def cmd_prom(url: str, regex: str) -> None:
    v = prom_sum(url, regex)
    print(int(v) if v == int(v) else v)


def cmd_presign_samples(path: str, n: str) -> None:
    """Samples are `unix_time signed_total` lines; the first line is the process launch
    (signed 0). Prints JSON: end-to-end rate (launch to the last response) and the steady rate
    (between 10 % and 90 % of N, the straight part of the curve)."""
    n = int(n)
    samples = []
    for line in open(path):
        t, v = line.split()
        samples.append((float(t), float(v)))
    t0 = samples[0][0]
    done = next(((t, v) for t, v in samples if v >= n), samples[-1])
    first = next(((t, v) for t, v in samples if v > 0), None)

    def at(frac):
        return next(((t, v) for t, v in samples if v >= frac * n), None)

    lo, hi = at(0.1), at(0.9)
    steady = (hi[1] - lo[1]) / (hi[0] - lo[0]) if lo and hi and hi[0] > lo[0] else None
    print(
        json.dumps(
            {
                "responses": n,
                "signed": done[1],
                "seconds_launch_to_done": done[0] - t0,
                "seconds_first_to_done": (done[0] - first[0]) if first else None,
                "rate_end_to_end": done[1] / (done[0] - t0) if done[0] > t0 else None,
                "rate_steady_10_90": steady,
            }
        )
    )


# --- CPU ---------------------------------------------------------------------------------------


def cmd_rusage(out: str, *argv: str) -> None:
    """Runs argv (after an optional `--`), stdout and stderr inherited; on its exit writes JSON
    to OUT: its status, wall seconds, and the user and system CPU seconds of the process and
    every thread it had (os.wait4: the kernel's own account, exited threads included). Exits
    with the child's status. The pre-signer's CPU per response is measured this way: it exits
    at the end (`presign --once`), so /proc is gone by then."""
    if argv and argv[0] == "--":
        argv = argv[1:]
    import signal
    import subprocess

    start = time.time()
    child = subprocess.Popen(list(argv))
    # Forward a stop request (run.sh stops its processes by pid) to the child.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda s, f: child.send_signal(s))
    while True:
        try:
            _, status, ru = os.wait4(child.pid, 0)
            break
        except InterruptedError:
            continue
    wall = time.time() - start
    code = os.waitstatus_to_exitcode(status)
    json.dump({"status": code, "wall_seconds": round(wall, 3), "user_seconds": ru.ru_utime,
               "system_seconds": ru.ru_stime, "cpu_seconds": ru.ru_utime + ru.ru_stime,
               "max_rss_kib": ru.ru_maxrss}, open(out, "w"))
    sys.exit(code if code >= 0 else 128 - code)



def proc_stat(path: str):
    try:
        text = open(path).read()
    except OSError:
        return None
    comm = text[text.index("(") + 1 : text.rindex(")")]
    fields = text[text.rindex(")") + 2 :].split()
    # fields[0] is field 3 (state): utime = field 14, stime = field 15, ppid = field 4
    return comm, int(fields[11]) + int(fields[12]), int(fields[1])


def children(pid: int):
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            st = proc_stat(f"/proc/{d}/stat")
            if st and st[2] == pid:
                out.append(int(d))
    return out


def machine_ticks():
    f = open("/proc/stat").readline().split()[1:]
    v = [int(x) for x in f[:8]]
    return sum(v) - v[3] - v[4], sum(v)


def cmd_cpu_snap(out: str, *roles: str) -> None:
    snap = {"time": time.time(), "machine": machine_ticks(), "roles": {}}
    for spec in roles:
        role, pid = spec.split("=")
        # Descendants too: the pre-signer runs under `rusage` (and `perf` with PERF_DIR).
        pids, i = [int(pid)], 0
        while i < len(pids):
            pids += children(pids[i])
            i += 1
        threads = {}
        for p in pids:
            try:
                tids = os.listdir(f"/proc/{p}/task")
            except OSError:
                continue
            for tid in tids:
                st = proc_stat(f"/proc/{p}/task/{tid}/stat")
                if st:
                    threads[f"{p}/{tid}"] = [st[0], st[1]]
        snap["roles"][role] = threads
    json.dump(snap, open(out, "w"))


def cpu_diff(a_path: str, b_path: str) -> dict:
    a, b = json.load(open(a_path)), json.load(open(b_path))
    secs = b["time"] - a["time"]
    (b0, t0), (b1, t1) = a["machine"], b["machine"]
    ncpu = os.cpu_count() or 1
    machine_cores = (b1 - b0) / (t1 - t0) * ncpu if t1 > t0 else None
    roles = {}
    ours = 0.0
    for role, threads in b["roles"].items():
        before = a["roles"].get(role, {})
        per = []
        for key, (name, ticks) in threads.items():
            start = before.get(key, [name, 0])[1]
            per.append((name, key.split("/")[1], (ticks - start) / TICKS / secs))
        per.sort(key=lambda x: -x[2])
        by_name = {}
        for name, _, c in per:
            by_name[name] = by_name.get(name, 0.0) + c
        total = sum(c for _, _, c in per)
        ours += total
        roles[role] = {
            "cores": round(total, 3),
            "by_name": {k: round(v, 3) for k, v in sorted(by_name.items(), key=lambda x: -x[1])},
            "busiest": [[n, t, round(c, 3)] for n, t, c in per[:8] if c > 0.005],
        }
    return {
        "seconds": round(secs, 2),
        "machine_cores": round(machine_cores, 3) if machine_cores is not None else None,
        "others_cores": round(machine_cores - ours, 3) if machine_cores is not None else None,
        "roles": roles,
    }


def cmd_cpu_diff(a: str, b: str) -> None:
    print(json.dumps(cpu_diff(a, b)))


# --- wrk ---------------------------------------------------------------------------------------


def wrk_result(path: str) -> dict:
    for line in open(path):
        if line.startswith("WRKJSON "):
            return json.loads(line[len("WRKJSON ") :])
    raise SystemExit(f"{path}: no WRKJSON line (did wrk fail?)")


def cmd_wrk_result(path: str) -> None:
    print(json.dumps(wrk_result(path)))


def kv(pairs):
    out = {}
    for p in pairs:
        k, v = p.split("=", 1)
        try:
            out[k] = json.loads(v)
        except ValueError:
            out[k] = v
    return out


def cmd_json(*pairs: str) -> None:
    print(json.dumps(kv(pairs)))


def cmd_wrk_record(name, rnd, wrk_file, cpu_a, cpu_b, *pairs) -> None:
    rec = {"kind": "wrk", "name": name, "round": int(rnd), "wrk": wrk_result(wrk_file)}
    try:
        rec["cpu"] = cpu_diff(cpu_a, cpu_b)
    except (OSError, ValueError):
        rec["cpu"] = None
    rec.update(kv(pairs))
    print(json.dumps(rec))


# --- summary -----------------------------------------------------------------------------------


def fmt_ms(us):
    return f"{us / 1000:.2f} ms"


def cmd_summary(d: str) -> None:
    rows = [json.loads(l) for l in open(os.path.join(d, "results.jsonl")) if l.strip()]
    runs = [r for r in rows if r["kind"] == "wrk"]
    meta = next((r for r in rows if r["kind"] == "meta"), {})
    presign = next((r for r in rows if r["kind"] == "presign"), None)
    signbatch = [r for r in rows if r["kind"] == "signbatch"]
    out = []
    w = out.append
    w(f"## Results ({meta.get('date', '?')}, N = {meta.get('count', '?'):,}, "
      f"hit set K = {meta.get('hits', '?'):,})\n")
    w(f"Machine: {meta.get('machine', '?')}; load before the run: {meta.get('load_before', '?')}\n")
    w("HSMs: " + (f"two modelled by hsm-sim (`--model {meta['model']}`; pre-signing and SignBatch "
                  "run at the modelled pair's speed)" if meta.get("model")
                  else "two SoftHSM2 tokens, signing on the same two cores as everything else") + "\n")

    w("### Serving (wrk " + meta.get("wrk_args", "") + ")\n")
    w("| run | round | requests/s | p50 | p99 | errors | server CPU (cores) | server CPU per request | wrk CPU | others |")
    w("|---|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in runs:
        res, cpu = r["wrk"], r.get("cpu") or {}
        roles = cpu.get("roles", {})
        server = roles.get("server", {}).get("cores")
        wrk_c = roles.get("wrk", {}).get("cores")
        errs = (res["connect_errors"] + res["read_errors"] + res["write_errors"]
                + res["status_errors"] + res["timeouts"])
        bad = r.get("bad_answers")
        per_req = f"{server / res['rps'] * 1e6:.1f} µs" if server and res["rps"] else "?"
        w(f"| {r['name']} | {r['round']} | {res['rps']:,.0f} | {fmt_ms(res['p50_us'])} | "
          f"{fmt_ms(res['p99_us'])} | {errs}{'' if not bad else f' (+{bad} non-signed)'} | "
          f"{server if server is not None else '?'} | {per_req} | "
          f"{wrk_c if wrk_c is not None else '?'} | "
          f"{cpu.get('others_cores', '?')} |")
    w("")

    def med(name, key="rps"):
        v = [r["wrk"][key] for r in runs if r["name"] == name]
        return statistics.median(v) if v else None

    def errors(r):
        x = r["wrk"]
        return (x["connect_errors"] + x["read_errors"] + x["write_errors"] + x["status_errors"]
                + x["timeouts"] + (r.get("bad_answers") or 0))

    def verdict(ratio, target, *names):
        if any(errors(r) for r in runs if r["name"] in names):
            return "INVALID: errors in a run"
        return "met" if ratio >= target else "NOT met"

    checks = []
    nh, rh = med("nginx-hit"), med("responder-hit")
    miss_ref = "nginx-all" if any(r["name"] == "nginx-all" for r in runs) else "nginx-hit"
    nm, rm = med(miss_ref), med("responder-miss")
    w("### Ratios (medians over rounds)\n")
    w("| comparison | responder | nginx | ratio | target | |")
    w("|---|---:|---:|---:|---:|---|")
    if nh and rh:
        ratio = rh / nh
        checks.append(ratio >= 1.0)
        w(f"| cache hits: responder-hit / nginx-hit | {rh:,.0f}/s, p99 {fmt_ms(med('responder-hit', 'p99_us'))} "
          f"| {nh:,.0f}/s, p99 {fmt_ms(med('nginx-hit', 'p99_us'))} | **{ratio:.2f}** | ≥ 1.0 | "
          f"{verdict(ratio, 1.0, 'nginx-hit', 'responder-hit')} |")
    if nm and rm:
        ratio = rm / nm
        checks.append(ratio >= 0.5)
        w(f"| cache misses: responder-miss / {miss_ref} | {rm:,.0f}/s, p99 {fmt_ms(med('responder-miss', 'p99_us'))} "
          f"| {nm:,.0f}/s, p99 {fmt_ms(med(miss_ref, 'p99_us'))} | **{ratio:.2f}** | ≥ 0.5 | "
          f"{verdict(ratio, 0.5, miss_ref, 'responder-miss')} |")
    if rm and nh and miss_ref != "nginx-hit":
        w(f"| (for scale) responder-miss / nginx-hit | {rm:,.0f}/s | {nh:,.0f}/s | {rm / nh:.2f} | | |")
    stand_in = "stand-in" in (meta.get("model") or "") or "fake" in (meta.get("model") or "")
    presign_target = 0.97 if stand_in else 0.9
    if presign and signbatch:
        sb = [s["rate"] for s in signbatch]
        ref = statistics.mean(sb)
        rate = presign["rate_end_to_end"]
        ratio = rate / ref
        checks.append(ratio >= presign_target)
        w(f"| pre-signing / SignBatch{' (stand-in signatures)' if stand_in else ''} | {rate:,.0f} responses/s "
          f"(steady {presign.get('rate_steady_10_90') or 0:,.0f}/s) | SignBatch "
          f"{' then '.join(f'{s:,.0f}' for s in sb)}/s (mean {ref:,.0f}) | **{ratio:.2f}** | ≥ {presign_target} | "
          f"{'met' if ratio >= presign_target else 'NOT met'} |")
    w("")

    # CPU per operation: the figures that do not move with the machine's speed.
    def cpu_per(name):
        v = []
        for r in runs:
            if r["name"] != name or not r.get("cpu") or not r["wrk"]["rps"]:
                continue
            cores = r["cpu"]["roles"].get("server", {}).get("cores")
            if cores:
                v.append(cores / r["wrk"]["rps"] * 1e6)
        return statistics.median(v) if v else None

    w("### CPU per operation (medians over rounds)\n")
    w("| what | CPU per operation | against | ratio | target | |")
    w("|---|---:|---:|---:|---:|---|")
    c = (presign or {}).get("cpu_brief") or {}
    if c.get("presigner_us_per_response") is not None:
        us = c["presigner_us_per_response"]
        w(f"| pre-signer, per response (`presign --once` user + system CPU, "
          f"{c['presigner_cpu_seconds']:.1f} s for {presign['responses']:,}) | **{us:.1f} µs** | | | ≤ 5 µs | "
          f"{'met' if us <= 5 else 'NOT met'} |")
        w(f"| gateway, per response signed (whole pre-signing) | {c['gateway_us_per_response']:.1f} µs | | | | |")
    for name, ref_name in (("responder-hit", "nginx-hit"), ("base-hit", "nginx-hit"),
                           ("responder-miss", miss_ref), ("base-miss", miss_ref)):
        a, b = cpu_per(name), cpu_per(ref_name)
        if a and b:
            target = "≤ 0.9" if name == "responder-hit" else ""
            if name.startswith("base-"):
                name = f"{name} (--compare-bin)"
            verdict_ = ("met" if a / b <= 0.9 else "NOT met") if target else ""
            w(f"| {name}: server CPU per request | **{a:.1f} µs** | {ref_name} {b:.1f} µs | **{a / b:.2f}** | "
              f"{target} | {verdict_} |")
    # The A/B itself, round by round (the two builds alternate within a round).
    for kind in ("hit", "miss"):
        pairs = []
        for r in runs:
            if r["name"] != f"responder-{kind}" or not r.get("cpu") or not r["wrk"]["rps"]:
                continue
            b = next((x for x in runs if x["name"] == f"base-{kind}" and x["round"] == r["round"]
                      and x.get("cpu") and x["wrk"]["rps"]), None)
            rc = r["cpu"]["roles"].get("server", {}).get("cores")
            bc = b["cpu"]["roles"].get("server", {}).get("cores") if b else None
            if rc and bc:
                pairs.append((rc / r["wrk"]["rps"]) / (bc / b["wrk"]["rps"]))
        if pairs:
            w(f"| responder-{kind} / base-{kind}: CPU per request, by round | "
              f"{', '.join(f'{p:.2f}' for p in pairs)} | | median **{statistics.median(pairs):.2f}** | | |")
    w("")
    if presign:
        w(f"Pre-signing: {presign['responses']:,} responses ({presign.get('certificates', 0):,} certificates) "
          f"in {presign['seconds_launch_to_done']:.1f} s "
          f"from launching `hsmgate-ocsp presign --once` to its exit "
          f"(import: {presign.get('import_seconds', 0):.1f} s).")
        c = presign.get("cpu_brief") or {}
        if c:
            workers = sum(v for k, v in c.get("gateway_threads", {}).items()
                          if re.search(r"-w\d+$", k))
            w(f"CPU while pre-signing (cores, of {os.cpu_count()}): machine {c.get('machine')}, "
              f"gateway {c.get('gateway')} (HSM worker threads {workers:.2f}), "
              f"pre-signer {c.get('presigner')} "
              f"({', '.join(f'{k} {v}' for k, v in c.get('presigner_threads', {}).items())}), "
              f"others {c.get('others')}.\n")
    for r in runs:
        if r.get("cache"):
            w(f"- {r['name']} round {r['round']}: responder metrics during the run: {r['cache']}")
    w("")
    print("\n".join(out))


def main() -> None:
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    cmd, args = sys.argv[1], sys.argv[2:]
    fn = {
        "import-list": cmd_import_list,
        "requests": cmd_requests,
        "dump": cmd_dump,
        "free-port": cmd_free_port,
        "prom": cmd_prom,
        "presign-samples": cmd_presign_samples,
        "cpu-snap": cmd_cpu_snap,
        "rusage": cmd_rusage,
        "cpu-diff": cmd_cpu_diff,
        "wrk-result": cmd_wrk_result,
        "wrk-record": cmd_wrk_record,
        "json": cmd_json,
        "summary": cmd_summary,
    }.get(cmd)
    if fn is None:
        sys.exit(f"unknown command {cmd}\n{__doc__}")
    fn(*args)


if __name__ == "__main__":
    main()
