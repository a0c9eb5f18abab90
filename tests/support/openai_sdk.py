"""Drives sluice's OpenAI front door with the official `openai` Python SDK, written as a
user would write it, beside the same backend called directly. Prints one JSON object of
what it saw; tests/llama_backend.rs asserts on it.

usage: openai_sdk.py SLUICE_BASE_URL BACKEND_BASE_URL API_KEY TIGHT_API_KEY

API_KEY is a tenant without limits; TIGHT_API_KEY a tenant allowed one queued request.
"""
import json
import sys
import time

import openai

sluice_url, backend_url, api_key, tight_key = sys.argv[1:5]
through_sluice = openai.OpenAI(base_url=f"{sluice_url}/v1", api_key=api_key)
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

try:
    openai.OpenAI(base_url=f"{sluice_url}/v1", api_key="sk-not-a-key").chat.completions.create(**request)
    found["bad_key"] = "no error raised"
except openai.AuthenticationError as e:
    found["bad_key"] = {"status": e.status_code, "message": e.message}

# The tight tenant's one queued place, taken by a long answer sent without waiting
# (sluice's own API; llama.cpp's `ignore_eos` makes it 400 tokens, several seconds);
# the SDK's call then finds the tenant full on every try.
tight = openai.OpenAI(base_url=f"{sluice_url}/v1", api_key=tight_key, max_retries=2)
long_one = tight.post(
    "/requests",
    body={"body": {**request, "max_tokens": 400, "ignore_eos": True}},
    cast_to=object,
)
started = time.monotonic()
try:
    tight.chat.completions.create(**request)
    found["rate_limited"] = "no error raised"
except openai.RateLimitError as e:
    found["rate_limited"] = {
        "status": e.status_code,
        "message": e.message,
        "retry_after": e.response.headers.get("retry-after"),
        "took_s": time.monotonic() - started,
    }

print(json.dumps(found))
