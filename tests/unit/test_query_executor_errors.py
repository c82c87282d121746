import pickle

from trace_platform.query.executor import QueryFailed


def test_query_failed_survives_the_process_boundary() -> None:
    err = pickle.loads(pickle.dumps(QueryFailed("query_timeout", "too slow")))
    assert (err.code, err.reason) == ("query_timeout", "too slow")
