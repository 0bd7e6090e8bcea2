

def test_forwarded_call_reaches_a_worker(cluster):
    inst = cluster("tests.apps.basic:Master", "tests.apps.basic:Worker", "--workers", "2")
    c = inst.client()
    assert c.result("add", 2, 3) == 5
    pids = {w["pid"] for w in inst.status()["workers"]}
    assert c.result("pid") in pids
