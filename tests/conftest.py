import pytest
import torch


def pytest_collection_modifyitems(config, items):
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="CUDA is not available")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.fixture
def registered():
    """``registered(registry, name, obj)`` adds ``obj`` to a public registry for one test
    and returns it; every entry added is unregistered at teardown, even after a failure."""
    added = []

    def add(registry, name, obj):
        registry.register(name)(obj)
        added.append((registry, name))
        return obj

    try:
        yield add
    finally:
        for registry, name in reversed(added):
            registry.unregister(name)
