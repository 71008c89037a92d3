# The jira-mail-sync Airflow image: the official Airflow image plus our hash-pinned lock and code.
FROM apache/airflow:3.3.2-python3.11

# DAGs and plugins import helpers as `include.<module>` (so does the compose file's jira-standin,
# which mounts devkit/ beside it), and Airflow itself only puts dags/, plugins/ and config/ on sys.path.
ENV PYTHONPATH=/opt/airflow

USER airflow
COPY --chown=airflow:0 requirements.txt /opt/airflow/requirements.txt
# The lock pins apache-airflow==3.3.2 itself, so resolving it cannot move Airflow off the base image.
RUN pip install --no-cache-dir --require-hashes -r /opt/airflow/requirements.txt

COPY --chown=airflow:0 dags/ /opt/airflow/dags/
COPY --chown=airflow:0 plugins/ /opt/airflow/plugins/
# The product only: devkit/ (test doubles, launchers) and tests/ stay out of the image.
COPY --chown=airflow:0 include/ /opt/airflow/include/
