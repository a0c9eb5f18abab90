"""Drives a sluice front door that serves several models with the official `openai`
Python SDK, as a user would: lists the models, calls one by an alias, and calls one that
nothing serves. Prints one JSON object of what it saw; tests/backends.rs asserts on it.

usage: openai_models.py SLUICE_BASE_URL
"""
import json
import sys

import openai

client = openai.OpenAI(base_url=f"{sys.argv[1]}/v1", api_key="unused", max_retries=0)
found = {"models": sorted(model.id for model in client.models.list())}

raw = client.chat.completions.with_raw_response.create(
    model="fast", messages=[{"role": "user", "content": "hi"}], max_tokens=4
)
answer = raw.parse()
found["alias_model"] = answer.model
found["alias_backend"] = raw.headers.get("x-sluice-backend")

try:
    client.chat.completions.create(
        model="gpt-5", messages=[{"role": "user", "content": "hi"}], max_tokens=4
    )
    found["unknown"] = "no error raised"
except openai.NotFoundError as e:
    found["unknown"] = {"status": e.status_code, "code": e.code, "message": e.message}

print(json.dumps(found))
