"""The server's routers, one per resource; serve/app.py includes them, and none imports another or the app.

models.py         /v1/models, /v1/chat/completions, /v1/completions, /metrics
files.py          /v1/files                  upload (multipart), list, retrieve, content, delete
fine_tuning.py    /v1/fine_tuning/jobs       create, list, retrieve, cancel, pause, resume, events, checkpoints
jobs.py           /v1/lmtailor/jobs          lmtailor's own jobs (evaluation, merge, synth) on the same store and worker
graders.py        /v1/fine_tuning/alpha/graders/validate and /run
console.py        /v1/lmtailor/*             what the web console needs beyond OpenAI's API
"""
