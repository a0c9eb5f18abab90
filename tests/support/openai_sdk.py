"""Drives sluice's OpenAI front door with the official `openai` Python SDK, written as a
user would write it, beside the same backend called directly. Prints one JSON object of
what it saw; tests/llama_backend.rs asserts on it.

usage: openai_sdk.py SLUICE_BASE_URL BACKEND_BASE_URL
"""
import json
import sys
import time

import openai

sluice_url, backend_url = sys.argv[1], sys.argv[2]
through_sluice = openai.OpenAI(base_url=f"{sluice_url}/v1", api_key="unused")
direct = openai.OpenAI(base_url=f"{backend_url}/v1", api_key="unused")

request = dict(
    model="smollm2",
    messages=[{"role": "user", "content": "Name three colours of the rainbow."}],
    max_tokens=24,
    temperature=0,
)
found = {}

direct_answer = direct.chat.completions.create(**request)
found["direct_content"] = direct_answer.choices[0].message.content

raw = through_sluice.chat.completions.with_raw_response.create(**request)
answer = raw.parse()
found["sync_content"] = answer.choices[0].message.content
found["sync_request_id"] = raw.headers.get("x-request-id")
found["sync_usage"] = answer.usage.completion_tokens if answer.usage else None

pieces, started, first_after = [], time.monotonic(), None
for chunk in through_sluice.chat.completions.create(**request, stream=True):
    if chunk.choices and chunk.choices[0].delta.content:
        first_after = first_after or time.monotonic() - started
        pieces.append(chunk.choices[0].delta.content)
found["stream_content"] = "".join(pieces)
found["stream_chunks"] = len(pieces)
found["stream_first_content_s"] = first_after

try:
    through_sluice.chat.completions.create(
        model="smollm2", messages=[{"role": "user", "content": 5}], max_tokens=4
    )
    found["bad_request"] = "no error raised"
except openai.BadRequestError as e:
    found["bad_request"] = {"status": e.status_code, "message": e.message}

print(json.dumps(found))
