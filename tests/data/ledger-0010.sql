-- The ledger's schema as migrations 0001-0010 left it, when the ledger shared Alembic's default version
-- table (alembic_version) and made the service's api_keys and job_postings tables: pg_dump --schema-only of
-- a database those migrations built, its session settings and comments left out. Upgrade tests start here.

CREATE FUNCTION public.saga_events_append_only() RETURNS trigger
    LANGUAGE plpgsql
    AS $$
        BEGIN RAISE EXCEPTION 'saga_events is append-only'; END $$;

CREATE TABLE public.alembic_version (
    version_num character varying(32) NOT NULL
);

CREATE TABLE public.api_keys (
    id bigint NOT NULL,
    tenant text NOT NULL,
    name text,
    key_hash text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    revoked_at timestamp with time zone
);

CREATE SEQUENCE public.api_keys_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.api_keys_id_seq OWNED BY public.api_keys.id;

CREATE TABLE public.job_postings (
    id uuid NOT NULL,
    saga_id uuid NOT NULL,
    company text NOT NULL,
    title text NOT NULL,
    description text NOT NULL,
    contact_email text NOT NULL,
    logo_key text NOT NULL,
    status text DEFAULT 'draft'::text NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    published_at timestamp with time zone,
    CONSTRAINT job_postings_status_known CHECK ((status = ANY (ARRAY['draft'::text, 'live'::text])))
);

CREATE TABLE public.saga_events (
    id bigint NOT NULL,
    saga_id uuid NOT NULL,
    step text,
    kind text NOT NULL,
    detail jsonb DEFAULT '{}'::jsonb NOT NULL,
    created_at timestamp with time zone DEFAULT now() NOT NULL
);

CREATE SEQUENCE public.saga_events_id_seq
    START WITH 1
    INCREMENT BY 1
    NO MINVALUE
    NO MAXVALUE
    CACHE 1;

ALTER SEQUENCE public.saga_events_id_seq OWNED BY public.saga_events.id;

CREATE TABLE public.saga_steps (
    saga_id uuid NOT NULL,
    idx integer NOT NULL,
    name text NOT NULL,
    kind text NOT NULL,
    status text NOT NULL,
    attempts integer DEFAULT 0 NOT NULL,
    compensation_attempts integer DEFAULT 0 NOT NULL,
    fencing_token bigint DEFAULT 0 NOT NULL,
    lease_expires_at timestamp with time zone,
    not_before timestamp with time zone,
    task_id text,
    effect_unknown boolean DEFAULT false NOT NULL,
    result jsonb,
    error text,
    started_at timestamp with time zone,
    finished_at timestamp with time zone,
    compensated_at timestamp with time zone,
    checkpoint jsonb,
    compensation_result jsonb,
    generation integer DEFAULT 0 NOT NULL,
    CONSTRAINT saga_steps_kind_known CHECK ((kind = ANY (ARRAY['compensable'::text, 'pivot'::text, 'retriable'::text]))),
    CONSTRAINT saga_steps_status_known CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'succeeded'::text, 'failed'::text, 'compensating'::text, 'compensated'::text, 'skipped'::text])))
)
WITH (fillfactor='70');

CREATE TABLE public.sagas (
    id uuid NOT NULL,
    tenant text NOT NULL,
    type text NOT NULL,
    status text NOT NULL,
    input jsonb NOT NULL,
    idempotency_key text,
    request_hash text,
    cancel_requested boolean DEFAULT false NOT NULL,
    error text,
    deadline timestamp with time zone,
    created_at timestamp with time zone DEFAULT now() NOT NULL,
    updated_at timestamp with time zone DEFAULT now() NOT NULL,
    large_input jsonb,
    restart_of uuid,
    awaiting jsonb,
    rewind jsonb,
    version integer DEFAULT 1 NOT NULL,
    fingerprint text,
    CONSTRAINT sagas_status_known CHECK ((status = ANY (ARRAY['pending'::text, 'running'::text, 'compensating'::text, 'awaiting_input'::text, 'completed'::text, 'compensated'::text, 'paused'::text, 'failed'::text])))
)
WITH (fillfactor='80');

ALTER TABLE ONLY public.api_keys ALTER COLUMN id SET DEFAULT nextval('public.api_keys_id_seq'::regclass);

ALTER TABLE ONLY public.saga_events ALTER COLUMN id SET DEFAULT nextval('public.saga_events_id_seq'::regclass);

ALTER TABLE ONLY public.alembic_version
    ADD CONSTRAINT alembic_version_pkc PRIMARY KEY (version_num);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_key_hash_key UNIQUE (key_hash);

ALTER TABLE ONLY public.api_keys
    ADD CONSTRAINT api_keys_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.job_postings
    ADD CONSTRAINT job_postings_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.job_postings
    ADD CONSTRAINT job_postings_saga_id_key UNIQUE (saga_id);

ALTER TABLE ONLY public.saga_events
    ADD CONSTRAINT saga_events_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.saga_steps
    ADD CONSTRAINT saga_steps_pkey PRIMARY KEY (saga_id, idx);

ALTER TABLE ONLY public.sagas
    ADD CONSTRAINT sagas_pkey PRIMARY KEY (id);

ALTER TABLE ONLY public.sagas
    ADD CONSTRAINT sagas_tenant_idempotency_key UNIQUE (tenant, idempotency_key);

CREATE INDEX saga_events_saga ON public.saga_events USING btree (saga_id, id);

CREATE INDEX sagas_active ON public.sagas USING btree (created_at) WHERE (status = ANY (ARRAY['pending'::text, 'running'::text, 'compensating'::text, 'awaiting_input'::text]));

CREATE INDEX sagas_ended ON public.sagas USING btree (created_at) WHERE (status = ANY (ARRAY['completed'::text, 'compensated'::text]));

CREATE UNIQUE INDEX sagas_restart_of ON public.sagas USING btree (restart_of) WHERE (restart_of IS NOT NULL);

CREATE INDEX sagas_tenant_created ON public.sagas USING btree (tenant, created_at DESC, id DESC);

CREATE INDEX sagas_tenant_status_created ON public.sagas USING btree (tenant, status, created_at DESC);

CREATE TRIGGER saga_events_no_update BEFORE UPDATE ON public.saga_events FOR EACH ROW EXECUTE FUNCTION public.saga_events_append_only();

ALTER TABLE ONLY public.saga_steps
    ADD CONSTRAINT saga_steps_saga_id_fkey FOREIGN KEY (saga_id) REFERENCES public.sagas(id) ON DELETE CASCADE;

ALTER TABLE ONLY public.sagas
    ADD CONSTRAINT sagas_restart_of_fkey FOREIGN KEY (restart_of) REFERENCES public.sagas(id) ON DELETE SET NULL;

INSERT INTO public.alembic_version VALUES ('0010');
