"""Small job programs the tests run for real (written into each test's project)."""

STEPPER = r'''
import json, math, os, sys, time
args = dict(a.split("=", 1) for a in sys.argv[1:] if "=" in a)
steps = int(args.get("steps", 10)); delay = float(args.get("delay", 0.1)); fail = int(args.get("fail", 0))
for i in range(1, steps + 1):
    print(f"step={i} loss={1.0 / i:.6f} tag={args.get('tag', 0)}", flush=True)
    time.sleep(delay)
sys.exit(fail)
'''

ARGV = r'''
import json, os, sys
with open(os.path.join(os.environ["NERO_RUN_DIR"], "argv.json"), "w") as f:
    json.dump(sys.argv[1:], f)
print("done=1")
'''

CONSTANT = r'''
import sys, time
loss = float(sys.argv[1]); fail = int(sys.argv[2]) if len(sys.argv) > 2 else 0
for i in range(1, 10_000):
    print(f"step={i} loss={loss}", flush=True)
    if fail and i >= fail:
        sys.exit(1)
    time.sleep(0.1)
'''

RESUMER = r'''
import json, os, sys
prev = os.environ.get("NERO_PREV_RUN_DIR", "")
done = 0
if os.environ.get("NERO_RESUME") == "1" and prev:
    done = json.load(open(os.path.join(prev, "ckpt.json")))["done"]
for step in range(done + 1, done + 6):
    print(f"step={step} loss={1 / step:.4f}", flush=True)
json.dump({"done": done + 5, "resume": os.environ.get("NERO_RESUME"), "prev": prev},
          open(os.path.join(os.environ["NERO_RUN_DIR"], "ckpt.json"), "w"))
sys.exit(0 if done + 5 >= 15 else 2)
'''

SLEEPER = r'''
import sys, time
time.sleep(float(sys.argv[1]))
print("done=1")
'''
