"""OpenAI's files and fine-tuning jobs API on lmtailor, and lmtailor's own jobs: one router per resource.

files.py          /v1/files                  upload (multipart), list, retrieve, content, delete
fine_tuning.py    /v1/fine_tuning/jobs       create, list, retrieve, cancel, pause, resume, events, checkpoints
jobs.py           /v1/lmtailor/jobs          lmtailor's own jobs (evaluation, merge, synth) on the same store and worker
"""
