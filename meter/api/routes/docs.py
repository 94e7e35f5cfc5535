"""`/docs` (Swagger UI) and `/redoc`, served with assets from the package: no CDN, so the API
documentation works on a machine without internet access (FastAPI's defaults load jsDelivr)."""

from __future__ import annotations

from pathlib import Path

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import FileResponse, HTMLResponse

router = APIRouter(include_in_schema=False)

ASSETS = Path(__file__).resolve().parent.parent / "static" / "docs"
ASSET_PREFIX = "/docs/assets"
# Only these files are served: a fixed list, so no path can reach outside the folder.
_MEDIA_TYPES = {
    "swagger-ui-bundle.js": "text/javascript",
    "swagger-ui.css": "text/css",
    "favicon-32x32.png": "image/png",
    "redoc.standalone.js": "text/javascript",
}


def _url(request: Request, path: str) -> str:
    # Relative to the app's root path, so it also works behind a reverse proxy prefix.
    return f"{request.scope.get('root_path', '').rstrip('/')}{path}"


@router.get("/docs")
def swagger_ui(request: Request) -> HTMLResponse:
    return get_swagger_ui_html(
        openapi_url=_url(request, request.app.openapi_url),
        title=f"{request.app.title} API",
        swagger_js_url=_url(request, f"{ASSET_PREFIX}/swagger-ui-bundle.js"),
        swagger_css_url=_url(request, f"{ASSET_PREFIX}/swagger-ui.css"),
        swagger_favicon_url=_url(request, f"{ASSET_PREFIX}/favicon-32x32.png"),
        oauth2_redirect_url=_url(request, "/docs/oauth2-redirect"),
        swagger_ui_parameters={"persistAuthorization": True},
    )


@router.get("/docs/oauth2-redirect")
def swagger_ui_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc")
def redoc(request: Request) -> HTMLResponse:
    return get_redoc_html(
        openapi_url=_url(request, request.app.openapi_url),
        title=f"{request.app.title} API",
        redoc_js_url=_url(request, f"{ASSET_PREFIX}/redoc.standalone.js"),
        redoc_favicon_url=_url(request, f"{ASSET_PREFIX}/favicon-32x32.png"),
        with_google_fonts=False,
    )


@router.get(ASSET_PREFIX + "/{name}")
def docs_asset(name: str) -> FileResponse:
    media_type = _MEDIA_TYPES.get(name)
    if media_type is None:
        raise HTTPException(404, detail=f"no documentation asset {name!r}")
    return FileResponse(
        ASSETS / name,
        media_type=media_type,
        headers={"Cache-Control": "public, max-age=86400"},
    )
