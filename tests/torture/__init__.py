"""The torture suite (issue #12): nero killed at random moments and at named points while
real jobs print metric lines, hostile workbooks, misbehaving jobs and a full disk.

    kills.py         seeded SIGKILLs of `nero reconcile --watch`, then the checks (duplicate
                     starts, lost and duplicated points, results.xlsx readable)
    crash_driver.py  `nero` with a SIGKILL armed at a named point of its real code path
    inputs.py        hostile workbooks (tests/hostile_workbooks.py), bad jobs, a full disk;
                     every nero process timed, its peak memory measured and capped
    test_torture.py  the short run, inside the normal pytest run (marker `torture`)
    __main__.py      the long run by hand: python -m tests.torture --kills 60 --seed 1
"""
