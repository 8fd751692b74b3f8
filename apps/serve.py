"""The app server process: ``python -m apps.serve run apps/<app>.py [streamlit options] -- ARGS``.

Imports what the pages need (pandas, pyarrow, altair, PIL, OpenCV, onnxruntime, SimpleITK, SQLAlchemy, our helpers)
before handing over to streamlit's own CLI in the same process, so the first page view does not wait for
them. The pages themselves are not imported here: streamlit runs them as scripts.
"""

from __future__ import annotations

import sys


def warm_imports() -> None:
    import altair  # noqa: F401  (st.line_chart)
    import cv2  # noqa: F401
    import onnxruntime  # noqa: F401
    import pandas  # noqa: F401
    import PIL.Image  # noqa: F401  (st.image)
    import pyarrow  # noqa: F401
    import SimpleITK  # noqa: F401
    import sqlalchemy  # noqa: F401

    import apps.med_data
    import apps.med_view
    import apps.qc_data
    import apps.qc_draw  # noqa: F401
    import common.store  # noqa: F401


def main() -> None:
    warm_imports()
    from streamlit.web import cli

    sys.exit(cli.main(prog_name="streamlit"))


if __name__ == "__main__":
    main()
