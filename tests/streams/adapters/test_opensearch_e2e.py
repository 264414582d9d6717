"""The catalog pipeline with OpenSearch as the vector index: a CPU worker configured with
RESTYLE_OPENSEARCH_URL indexes a catalog into a real OpenSearch node and serves product search
from it."""
from __future__ import annotations

import asyncio
import json
import urllib.request
import uuid

from streams.cli import catalog
from streams.cli.client import api_get
from streams.cli.demo import sample_catalog_dir
from streams.core.settings import Settings, load_settings
from streams.stack.embedded import free_port
from streams.stack.up import RestyleStack


def test_the_catalog_lands_in_opensearch_and_search_is_served_from_it(
        opensearch_url, tiny_models, tmp_path):
    index_name = f"restyle-e2e-{uuid.uuid4().hex[:8]}"
    stack = RestyleStack(
        Settings(state_dir=tmp_path / "state", web_port=free_port()), models=str(tiny_models),
        gpu_workers=0, trainer_workers=0, extra_env={"RESTYLE_OPENSEARCH_URL": opensearch_url,
                                  "RESTYLE_OPENSEARCH_INDEX": index_name, "HF_HUB_OFFLINE": "1"})
    stack.start()
    try:
        settings = load_settings(state_dir=stack.state_dir)
        ingest_id, total = asyncio.run(catalog.start_ingest(
            settings, str(sample_catalog_dir(tmp_path / "catalog"))))
        state = catalog.wait_for_ingest(settings, ingest_id, total, 180)
        assert (state.indexed, state.failed) == (total, 0)

        with urllib.request.urlopen(f"{opensearch_url}/{index_name}/_count") as response:
            assert json.loads(response.read())["count"] == total
        with urllib.request.urlopen(f"{opensearch_url}/{index_name}/_mapping") as response:
            vector = json.loads(response.read())[index_name]["mappings"]["properties"]["vector"]
        assert vector["type"] == "knn_vector"
        assert vector["method"]["name"] == "hnsw"
        assert vector["method"]["space_type"] == "cosinesimil"

        found = api_get(settings, "/products/search?q=grey%20sofa&k=3")["products"]
        assert len(found) == 3 and all(-1 <= p["score"] <= 1 for p in found)
        product = api_get(settings, f"/products/{found[0]['product_id']}")
        assert product["caption"] == found[0]["caption"]
    finally:
        stack.stop()
        urllib.request.urlopen(urllib.request.Request(f"{opensearch_url}/{index_name}",
                                                      method="DELETE"))
