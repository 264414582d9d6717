"""multipart/form-data bodies, as a browser's form or `curl -F` sends them to the status API."""
from __future__ import annotations

import uuid


def multipart(files: dict[str, bytes], fields: dict[str, str] | None = None,
              file_field: str = "photos") -> tuple[bytes, dict]:
    """The body and Content-Type header of a form with `fields` and one `file_field` part per
    file (name -> JPEG bytes)."""
    boundary = uuid.uuid4().hex
    parts = [(f'--{boundary}\r\nContent-Disposition: form-data; name="{name}"\r\n\r\n'
              f'{value}\r\n').encode() for name, value in (fields or {}).items()]
    for name, data in files.items():
        parts.append((f'--{boundary}\r\nContent-Disposition: form-data; name="{file_field}"; '
                      f'filename="{name}"\r\nContent-Type: image/jpeg\r\n\r\n').encode()
                     + data + b"\r\n")
    parts.append(f"--{boundary}--\r\n".encode())
    return b"".join(parts), {"Content-Type": f"multipart/form-data; boundary={boundary}"}
