"""A GCS-compatible server on loopback for the tests: `gcp-storage-emulator` (PyPI), started as
`python tests/helpers/gcs_emulator.py --port P --data-dir D --bucket B`.

Two behaviours of Cloud Storage that tcclip_jax and tensorstore rely on are missing from the
emulator (2026.7), and are added here, before its request table is built:

* `x-goog-generation` / `x-goog-metageneration` headers on downloads: tensorstore reads an
  object's generation from them (without them every read of an existing object fails with
  "Malformed StorageGeneration", e.g. orbax's OCDBT manifest on the second array of a save);
* the `ifGenerationMatch` precondition on uploads (412 when it does not hold): the run lock's
  create-if-absent (`runtime.storage.create_new`) and tensorstore's conditional writes.

Everything else is the emulator's own code.
"""

from __future__ import annotations

import json
import sys
from http import HTTPStatus

INSTALL = "pip install gcp-storage-emulator (the test extra: pip install -e '.[test,gcs]')"


def _patch() -> None:
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    download, insert, xml_upload = objects.download, objects.insert, objects.xml_upload

    def with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status == HTTPStatus.OK or response.status == HTTPStatus.PARTIAL_CONTENT:
            try:
                obj = storage.get_file_obj(
                    request.params["bucket_name"], request.params["object_id"]
                )
            except NotFound:
                return
            response["x-goog-generation"] = str(obj["generation"])
            response["x-goog-metageneration"] = str(obj.get("metageneration", "1"))

    def object_name(request) -> str | None:
        if "name" in request.query:
            return request.query["name"][0]
        if "object_id" in request.params:
            return request.params["object_id"]
        try:
            data = request.data
        except Exception:  # noqa: BLE001 - a body the emulator cannot parse: no name
            return None
        if isinstance(data, dict):
            meta = data.get("meta") if isinstance(data.get("meta"), dict) else data
            return meta.get("name")
        return None

    def precondition_holds(request, storage) -> bool:
        wanted = request.query.get("ifGenerationMatch")
        if not wanted:
            return True
        name = object_name(request)
        if name is None:
            return True
        try:
            obj = storage.get_file_obj(request.params["bucket_name"], name)
        except NotFound:
            return wanted[0] == "0"
        return wanted[0] != "0" and str(obj["generation"]) == wanted[0]

    def refuse(response) -> None:
        response.status = HTTPStatus.PRECONDITION_FAILED
        response["Content-type"] = "application/json"
        response._content = json.dumps(  # noqa: SLF001 - the emulator's own response object
            {"error": {"code": 412, "message": "At least one of the pre-conditions you "
                       "specified did not hold.", "errors": [{"reason": "conditionNotMet"}]}}
        )  # fmt: skip

    def checked(handler):
        def handle(request, response, storage, *args, **kwargs):
            if not precondition_holds(request, storage):
                return refuse(response)
            return handler(request, response, storage, *args, **kwargs)

        return handle

    objects.download = with_generation
    objects.insert = checked(insert)
    objects.xml_upload = checked(xml_upload)


def main(argv: list[str]) -> None:
    import argparse

    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--data-dir", required=True)
    parser.add_argument("--bucket", required=True)
    args = parser.parse_args(argv)
    _patch()
    from gcp_storage_emulator.__main__ import main as emulator  # builds its request table now

    emulator(["-d", args.data_dir, "start", "--host", "127.0.0.1", "--port", str(args.port),
              "--default-bucket", args.bucket, "--quiet"])  # fmt: skip


if __name__ == "__main__":
    main(sys.argv[1:])
