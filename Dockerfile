# Web and worker image. The same image runs `uvicorn` (web) or `celery worker` (worker).
FROM python:3.11-slim

ENV PYTHONDONTWRITEBYTECODE=1 PYTHONUNBUFFERED=1 HF_HUB_OFFLINE=1 PIP_DISABLE_PIP_VERSION_CHECK=1
WORKDIR /app

# Tesseract and its English data read scanned PDF pages (documents/ocr.py); nothing is downloaded at run time.
RUN apt-get update \
 && apt-get install -y --no-install-recommends tesseract-ocr tesseract-ocr-eng \
 && rm -rf /var/lib/apt/lists/*

COPY pyproject.toml README.md ./
COPY config config
COPY tenants tenants
COPY documents documents
COPY chat chat
COPY vectordb vectordb
# CPU-only torch for the local embedder; PyTorch's CPU index keeps the image free of CUDA.
RUN pip install --upgrade pip \
 && pip install --index-url https://download.pytorch.org/whl/cpu torch==2.13.0 \
 && pip install .

COPY manage.py ./
COPY templates templates
COPY static static
RUN DJANGO_SECRET_KEY=build DATABASE_URL=postgresql://build@localhost/build SILO_DATA_DIR=/tmp/silo \
    python manage.py collectstatic --noinput

RUN useradd --create-home silo && mkdir -p /data && chown silo /data
USER silo
ENV SILO_DATA_DIR=/data
EXPOSE 8000
# uvicorn with a header-read timeout, bounded concurrency and 413 for oversized bodies (config/web_server.py).
CMD ["python", "-m", "config.web_server", "--host", "0.0.0.0", "--port", "8000", "--proxy-headers"]
