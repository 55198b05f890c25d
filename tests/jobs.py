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
