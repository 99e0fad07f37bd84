"""The bundled model, usable by everyone, so a fresh install answers at once."""

from decimal import Decimal

from django.db import migrations


def create_default_model(apps, schema_editor):  # type: ignore[no-untyped-def]
    AIModel = apps.get_model("agents", "AIModel")
    if not AIModel.objects.exists():
        AIModel.objects.create(
            id="mdl_smollm2",
            name="SmolLM2 135M (bundled)",
            provider="local",
            provider_model="SmolLM2-135M-Instruct",
            context_window=2048,
            max_output_tokens=256,
            price_input_per_1k=Decimal("0"),
            price_output_per_1k=Decimal("0"),
            is_active=True,
            is_default=True,
            available_to_all=True,
        )


class Migration(migrations.Migration):
    dependencies = [("agents", "0001_initial")]

    operations = [migrations.RunPython(create_default_model, migrations.RunPython.noop)]
